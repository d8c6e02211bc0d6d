//! `#[derive(AsyncResource)]`, re-exported by `resource_runtime`; depend on that crate,
//! not on this one.

#![forbid(unsafe_code)]

mod ast;
mod attr;
mod bound;
mod ctxt;
mod expand;
mod valid;

/// Derives `AsyncResource`: enter and close generated field by field.
///
/// ```
/// use resource_runtime::AsyncResource;
/// use tokio_util::sync::CancellationToken;
///
/// #[derive(AsyncResource)]
/// #[resource(timeout = "5s")]
/// struct Worker {
///     #[resource]
///     stop: CancellationToken,
///     #[resource(timeout = "1s")]
///     task: tokio::task::JoinHandle<()>,
///     #[resource(skip)]
///     name: String,
/// }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// # let stop = CancellationToken::new();
/// # let s = stop.clone();
/// # let mut w = Worker { stop, task: tokio::spawn(async move { s.cancelled().await }), name: "w".into() };
/// # w.enter().await.unwrap();
/// # w.close().await.unwrap();
/// # }
/// ```
///
/// # What the generated code does
///
/// - **enter**: fields in declaration order, then `after_enter`. If one fails, the
///   fields already entered are closed in reverse, and the error carries the cause
///   followed by any rollback failures.
/// - **close**: `before_close`, then the fields in reverse declaration order. Every
///   field is closed even when earlier ones fail, time out or panic, and all failures
///   are returned in one `ResourceError`, each with its field path (`"client.pool"`,
///   `"0"` for a tuple field, `"Variant.field"` in an enum). A field past its deadline
///   has its close dropped and is reported as a timeout; a panic in a field's close is
///   caught and reported.
/// - The fields of a `group` (or all fields under `concurrent`) close concurrently as
///   one step, at the place of the group's last-declared field.
/// - An enum enters and closes the fields of its active variant.
/// - Each step runs in a `tracing` span (`resource.enter` / `resource.close`) with the
///   type, the field path, and on completion its duration and outcome.
///
/// # Field attributes
///
/// | attribute | meaning |
/// |---|---|
/// | `#[resource]` | the field implements `AsyncResource`; it is entered and closed |
/// | `#[resource(close = path)]` | close with `async fn(&mut FieldType) -> Result<(), E>` (a foreign type); nothing to enter unless `enter` is given |
/// | `#[resource(enter = path)]` | enter with `async fn(&mut FieldType) -> Result<(), E>` |
/// | `#[resource(timeout = "2s")]` | deadline for this field's close: numbers with units, like `"500ms"`, `"2s"`, `"1m 30s"`, `"1.5s"` or `"1h"` (humantime's grammar, the one `resource_runtime::http::EndpointConfig` reads durations in); a whole number of milliseconds, not zero |
/// | `#[resource(group = "io")]` | fields of one group close concurrently, as one step |
/// | `#[resource(name = "db")]` | the label in paths and spans (default: the field name) |
/// | `#[resource(skip)]` | explicitly not a resource |
/// | `#[resource(boxed)]` | box this field's enter and close futures: needed when the field's type contains this type through another type, an alias, or a path other than the type's bare name (`crate::Node`, `super::Node`); a field whose type names the type itself as `Node`, `self::Node` or `Self` (`Vec<Node>`, `Option<Box<Self>>`) is boxed without it. In a generic type such a field also needs `bound = "..."`, since the inferred predicate would require the type's own impl |
///
/// `E` is any error that converts into `Box<dyn Error + Send + Sync>`. Any
/// `#[resource(...)]` other than `skip` marks the field as a resource.
///
/// # Container attributes
///
/// | attribute | meaning |
/// |---|---|
/// | `#[resource(concurrent)]` | all resource fields close concurrently as one step |
/// | `#[resource(timeout = "5s")]` | deadline for the whole close, written as a field's `timeout`: the step in progress is dropped, and the error names it and every field not reached |
/// | `#[resource(before_close = method)]` | `async fn(&mut self) -> Result<(), E>` run before the fields close |
/// | `#[resource(after_enter = method)]` | `async fn(&mut self) -> Result<(), E>` run once every field is entered |
/// | `#[resource(bound = "T: Trait")]` | replace the inferred where-clause predicates |
/// | `#[resource(crate = "path")]` | where the runtime crate is, when it is re-exported or renamed |
///
/// Hooks run on every enter or close: a `before_close` that has nothing left to do on
/// a second close (or on a value never entered) should do nothing, so that the derived
/// close stays idempotent, as the fields' closes are.
///
/// # Generics
///
/// For every resource field whose type mentions a type parameter, the impl requires
/// `FieldType: AsyncResource`, and the type itself must be `Send`. A field whose type
/// names the type itself (see `boxed`) adds no predicate: its impl is the one derived.
/// `bound = "..."` replaces these predicates with the ones given (include `Send` ones
/// if needed).
///
/// # The unmarked-field warning
///
/// A field without any `#[resource...]` attribute whose type implements
/// `AsyncResource` draws a deprecation warning naming the field: it was probably meant
/// to be closed. Mark it `#[resource]`, or `#[resource(skip)]` to say it is not.
#[proc_macro_derive(AsyncResource, attributes(resource))]
pub fn derive_async_resource(input: proc_macro::TokenStream) -> proc_macro::TokenStream {
    let input = syn::parse_macro_input!(input as syn::DeriveInput);
    expand::derive(&input).into()
}

#[cfg(test)]
mod tests;
