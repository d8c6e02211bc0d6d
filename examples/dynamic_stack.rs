//! A set of resources known only at run time, in a `ResourceStack`.
//!
//! A gateway reads its list of providers from configuration (two const arrays here)
//! and builds one client per provider. The setup:
//!
//! 1. creates a scratch file and `defer`s its removal, so the stack removes it when it
//!    closes;
//! 2. enters each provider into the stack as it comes (`stack.enter(...)`);
//! 3. if one fails to enter, closes the stack on the error path: what was entered is
//!    released, last in first out, and the scratch file removed;
//! 4. if every provider entered, hands the whole stack over with `pop_all()` to the
//!    gateway, a long-lived owner that reaches each client through its `StackSlot` and closes
//!    the stack when it shuts down.
//!
//! The first configuration has a provider whose enter fails; the second enters, and two
//! of its providers fail to close, to show the one error holding both failures, each
//! with its path.
//!
//! ```sh
//! cargo run --example dynamic_stack
//! ```

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use resource_runtime::{
    AsyncResource, Managed, ResourceError, ResourceStack, StackSlot, wait_detached,
};

/// One provider in the configuration, and how the simulation makes it behave.
#[derive(Debug)]
struct Spec {
    name: &'static str,
    fails_to_enter: bool,
    fails_to_close: bool,
}

const fn provider(name: &'static str) -> Spec {
    Spec {
        name,
        fails_to_enter: false,
        fails_to_close: false,
    }
}

const fn enter_fails(name: &'static str) -> Spec {
    Spec {
        fails_to_enter: true,
        ..provider(name)
    }
}

const fn close_fails(name: &'static str) -> Spec {
    Spec {
        fails_to_close: true,
        ..provider(name)
    }
}

/// The first configuration: `vision`'s key is rejected, so its enter fails.
const FIRST_CONFIG: [Spec; 4] = [
    provider("chat"),
    provider("embeddings"),
    enter_fails("vision"),
    provider("speech"),
];

/// The second configuration: every provider enters; `embeddings` and `speech` fail to
/// close.
const SECOND_CONFIG: [Spec; 4] = [
    provider("chat"),
    close_fails("embeddings"),
    provider("vision"),
    close_fails("speech"),
];

/// What closed, in the order it closed.
type Journal = Arc<Mutex<Vec<String>>>;

fn record(journal: &Journal, what: String) {
    journal.lock().unwrap_or_else(|p| p.into_inner()).push(what);
}

/// Prints the close order recorded since the last call.
fn print_close_order(journal: &Journal) {
    let closed = std::mem::take(&mut *journal.lock().unwrap_or_else(|p| p.into_inner()));
    println!(
        "   close order (last in, first out): {}",
        closed.join(" -> ")
    );
}

/// A provider's client, with `AsyncResource` written by hand: `enter` connects, `close`
/// disconnects, and a close of a client that is not connected does nothing.
#[derive(Debug)]
struct ProviderClient {
    spec: &'static Spec,
    connected: bool,
    served: u32,
    journal: Journal,
}

impl ProviderClient {
    fn new(spec: &'static Spec, journal: &Journal) -> ProviderClient {
        ProviderClient {
            spec,
            connected: false,
            served: 0,
            journal: journal.clone(),
        }
    }

    fn serve(&mut self, request: &str) -> String {
        self.served += 1;
        format!(
            "{} answered {request:?} ({} served)",
            self.spec.name, self.served
        )
    }
}

impl AsyncResource for ProviderClient {
    async fn enter(&mut self) -> Result<(), ResourceError> {
        let name = self.spec.name;
        tokio::time::sleep(Duration::from_millis(10)).await;
        if self.spec.fails_to_enter {
            println!("     enter {name}: failed, the API key was rejected");
            return Err(ResourceError::other(format!(
                "`{name}` rejected the API key"
            )));
        }
        self.connected = true;
        println!("     enter {name}: connected");
        Ok(())
    }

    async fn close(&mut self) -> Result<(), ResourceError> {
        if !self.connected {
            return Ok(());
        }
        // Whatever happens next, the client holds nothing any more (the close contract).
        self.connected = false;
        let name = self.spec.name;
        tokio::time::sleep(Duration::from_millis(5)).await;
        record(&self.journal, name.to_owned());
        if self.spec.fails_to_close {
            println!("     close {name}: failed, the connection was reset");
            return Err(ResourceError::other(format!(
                "`{name}`: connection reset while saying goodbye"
            )));
        }
        println!("     close {name}: disconnected");
        Ok(())
    }
}

/// The routes a built setup serves: a provider name and the slot of its client.
type Routes = Vec<(&'static str, StackSlot<ProviderClient>)>;

/// Builds one client per provider in `config` on a stack. On success the stack is handed
/// over with `pop_all()`; on failure it is closed here, before the error is returned.
async fn build(
    attempt: &str,
    config: &'static [Spec],
    journal: &Journal,
) -> Result<(ResourceStack, Routes), ResourceError> {
    let mut stack = ResourceStack::new().with_step_timeout(Duration::from_secs(1));

    let scratch = scratch_path(attempt);
    tokio::fs::write(&scratch, b"provider setup scratch\n")
        .await
        .map_err(ResourceError::other)?;
    println!(
        "     created {} and deferred its removal",
        scratch.display()
    );
    let deferred = journal.clone();
    stack.defer(async move {
        tokio::fs::remove_file(&scratch).await?;
        record(&deferred, "scratch file".to_owned());
        println!("     deferred step: removed {}", scratch.display());
        Ok::<(), std::io::Error>(())
    });

    let mut routes = Vec::new();
    for spec in config {
        match stack.enter(ProviderClient::new(spec, journal)).await {
            Ok(slot) => routes.push((spec.name, slot)),
            Err(error) => {
                println!(
                    "   setup failed at `{}`; closing the {} entries already on the stack:",
                    spec.name,
                    stack.len()
                );
                if let Err(close_error) = stack.close().await {
                    println!("   releasing them failed too: {close_error}");
                }
                return Err(error);
            }
        }
    }
    println!(
        "   setup complete: {} entries; handed over with pop_all()",
        stack.len()
    );
    Ok((stack.pop_all(), routes))
}

fn scratch_path(attempt: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "resource-dynamic-stack-{}-{attempt}.tmp",
        std::process::id()
    ))
}

/// The long-lived owner of a built setup: it closes the stack when it closes.
#[derive(AsyncResource)]
struct Gateway {
    #[resource]
    providers: ResourceStack,
    #[resource(skip)]
    routes: Routes,
}

impl Gateway {
    fn client(&mut self, name: &str) -> Option<&mut ProviderClient> {
        let (_, slot) = self.routes.iter().find(|(n, _)| *n == name)?;
        self.providers.get_mut(slot)
    }
}

fn names(config: &[Spec]) -> String {
    let names: Vec<String> = config
        .iter()
        .map(|s| match (s.fails_to_enter, s.fails_to_close) {
            (true, _) => format!("{} (fails to enter)", s.name),
            (_, true) => format!("{} (fails to close)", s.name),
            _ => s.name.to_owned(),
        })
        .collect();
    names.join(", ")
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let journal = Journal::default();

    println!("1. first configuration: {}", names(&FIRST_CONFIG));
    match build("first", &FIRST_CONFIG, &journal).await {
        Ok(_) => return Err("the first setup was expected to fail".into()),
        Err(error) => println!("   build returned the enter error: {error}"),
    }
    print_close_order(&journal);
    println!(
        "   scratch file still there: {}",
        scratch_path("first").exists()
    );

    println!("\n2. second configuration: {}", names(&SECOND_CONFIG));
    let (providers, routes) = build("second", &SECOND_CONFIG, &journal).await?;
    let mut gateway = Managed::enter(Gateway { providers, routes }).await?;

    println!("\n3. the gateway owns the stack and reaches each client through its slot");
    for (name, request) in [("chat", "hello"), ("vision", "cat.png"), ("chat", "thanks")] {
        let client = gateway.client(name).ok_or("no such provider")?;
        println!("   {}", client.serve(request));
    }

    println!("\n4. the gateway shuts down and closes its stack; two closes fail:");
    let error = match gateway.close().await {
        Ok(()) => return Err("the second setup was expected to fail to close".into()),
        Err(error) => error,
    };
    print_close_order(&journal);
    println!(
        "   scratch file still there: {}",
        scratch_path("second").exists()
    );
    println!("   the close returned one error with every failure:");
    for line in error.to_string().lines() {
        println!("     {line}");
    }
    println!(
        "   each failure, with its path (the field, then the entry's position; 0 is the deferred step):"
    );
    for failure in error.failures() {
        println!(
            "     path {:<14} operation {:<6} {}",
            format!("{:?}", failure.path().unwrap_or("-")),
            failure
                .operation()
                .map(|op| op.to_string())
                .unwrap_or_default(),
            failure.get_ref().map(|e| e.to_string()).unwrap_or_default()
        );
    }
    if error.failures().count() != 2 {
        return Err(format!("expected 2 failures, got: {error}").into());
    }

    wait_detached(Duration::from_secs(5)).await?;
    println!("\nno close left in the background; done");
    Ok(())
}
