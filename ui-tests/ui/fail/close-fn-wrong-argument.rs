use resource_runtime::AsyncResource;

struct Foreign;
struct Other;

async fn close_other(_: &mut Other) -> std::io::Result<()> {
    Ok(())
}

#[derive(AsyncResource)]
struct Holder {
    #[resource(close = close_other)]
    foreign: Foreign,
}

fn main() {}
