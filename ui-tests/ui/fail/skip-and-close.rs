use resource_runtime::AsyncResource;

struct Foreign;

async fn close_foreign(_: &mut Foreign) -> std::io::Result<()> {
    Ok(())
}

#[derive(AsyncResource)]
struct Holder {
    #[resource(skip, close = close_foreign)]
    foreign: Foreign,
}

fn main() {}
