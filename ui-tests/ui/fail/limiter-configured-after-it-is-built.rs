// A limiter is configured before it exists: once built, every clone shares it, and
// no call can give one clone another burst.
use std::time::Duration;

use resource_runtime::limiter::RateLimiter;

fn main() {
    let limiter = RateLimiter::new(10, Duration::from_secs(1)).unwrap();
    let _one_token_at_a_time = limiter.with_burst(1);
}
