use resource_runtime::AsyncResource;

struct Foreign;

fn close_foreign(_: &mut Foreign) -> std::io::Result<()> {
    Ok(())
}

#[derive(AsyncResource)]
struct Holder {
    #[resource(close = close_foreign)]
    foreign: Foreign,
}

fn main() {}
