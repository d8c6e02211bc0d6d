use resource_runtime::AsyncResource;

struct Foreign;

async fn my_close(_: &mut Foreign) -> std::io::Result<()> {
    Ok(())
}

#[derive(AsyncResource)]
struct Holder {
    #[resource(close = "my_close")]
    foreign: Foreign,
}

fn main() {}
