use resource_runtime::AsyncResource;

#[derive(AsyncResource)]
union Either {
    a: u32,
    b: f32,
}

fn main() {}
