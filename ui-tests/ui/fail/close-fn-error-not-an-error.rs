use resource_runtime::AsyncResource;

struct Foreign;
struct NotAnError;

async fn close_foreign(_: &mut Foreign) -> Result<(), NotAnError> {
    Ok(())
}

#[derive(AsyncResource)]
struct Holder {
    #[resource(close = close_foreign)]
    foreign: Foreign,
}

fn main() {}
