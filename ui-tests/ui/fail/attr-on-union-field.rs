use resource_runtime::AsyncResource;

#[derive(AsyncResource)]
union Either {
    #[resource]
    a: u32,
    b: f32,
}

fn main() {}
