//! `#[resource(...)]` parsing. Every problem is pushed to the `Ctxt` and parsing goes on
//! with the next key, so one derive reports all of its attribute errors at once.

use proc_macro2::{Span, TokenTree};
use syn::meta::ParseNestedMeta;
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{Attribute, Ident, Lit, LitStr, Path, Token, WherePredicate};

use crate::ctxt::Ctxt;

pub(crate) const FIELD_KEYS: &[&str] = &[
    "skip", "close", "enter", "timeout", "group", "name", "boxed",
];
pub(crate) const CONTAINER_KEYS: &[&str] = &[
    "concurrent",
    "timeout",
    "before_close",
    "after_enter",
    "bound",
    "crate",
];

/// A deadline given as a duration string, read by [`parse_deadline_ms`].
#[derive(Clone, Copy)]
pub(crate) struct Timeout {
    pub(crate) millis: u64,
}

/// Attributes of one field.
#[derive(Default)]
pub(crate) struct FieldAttrs {
    /// The first `#[resource...]` attribute on the field, if any.
    pub(crate) marker: Option<Span>,
    pub(crate) skip: Option<Span>,
    pub(crate) close: Option<Path>,
    pub(crate) enter: Option<Path>,
    pub(crate) timeout: Option<Timeout>,
    pub(crate) group: Option<LitStr>,
    pub(crate) name: Option<LitStr>,
    pub(crate) boxed: Option<Span>,
    /// Every key given, with its span, for rules that span several keys.
    pub(crate) keys: Vec<(&'static str, Span)>,
}

/// Attributes of the struct or enum.
#[derive(Default)]
pub(crate) struct ContainerAttrs {
    pub(crate) concurrent: Option<Span>,
    pub(crate) timeout: Option<Timeout>,
    pub(crate) before_close: Option<Ident>,
    pub(crate) after_enter: Option<Ident>,
    pub(crate) bound: Option<Vec<WherePredicate>>,
    pub(crate) krate: Option<Path>,
}

fn resource_attrs(attrs: &[Attribute]) -> impl Iterator<Item = &Attribute> {
    attrs.iter().filter(|a| a.path().is_ident("resource"))
}

/// Consumes the rest of a key's value, up to the next top-level comma, so that parsing
/// can go on after an error.
fn skip_value(meta: &ParseNestedMeta<'_>) -> syn::Result<()> {
    meta.input.step(|cursor| {
        let mut rest = *cursor;
        while let Some((tt, next)) = rest.token_tree() {
            if let TokenTree::Punct(p) = &tt
                && p.as_char() == ','
            {
                return Ok(((), rest));
            }
            rest = next;
        }
        Ok(((), rest))
    })
}

/// The closest known key to a misspelt one, if it is close enough to be a typo.
fn suggestion<'k>(unknown: &str, known: &[&'k str]) -> Option<&'k str> {
    known
        .iter()
        .map(|k| (*k, strsim::jaro_winkler(unknown, k)))
        .filter(|(_, score)| *score >= 0.8)
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(k, _)| k)
}

fn list(keys: &[&str]) -> String {
    keys.iter()
        .map(|k| format!("`{k}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

enum Level {
    Field,
    Container,
}

impl Level {
    fn known(&self) -> &'static [&'static str] {
        match self {
            Level::Field => FIELD_KEYS,
            Level::Container => CONTAINER_KEYS,
        }
    }

    fn unknown_key_message(&self, key: &str) -> String {
        let (this, other, other_keys, put) = match self {
            Level::Field => (
                "a field",
                "container",
                CONTAINER_KEYS,
                "on the struct or enum",
            ),
            Level::Container => ("a struct or enum", "field", FIELD_KEYS, "on a field"),
        };
        if other_keys.contains(&key) && !self.known().contains(&key) {
            return format!("`{key}` is a {other} attribute, not one for {this}: put it {put}");
        }
        let mut msg = format!("unknown key `{key}` in `#[resource(...)]` on {this}");
        if let Some(s) = suggestion(key, self.known()) {
            msg.push_str(&format!("; did you mean `{s}`?"));
        }
        msg.push_str(&format!("\nexpected one of: {}", list(self.known())));
        msg
    }
}

/// Walks every key of every `#[resource(...)]` attribute: reports unknown and duplicate
/// keys and hands each known key to `handle`, which parses its value.
fn for_each_key(
    cx: &Ctxt,
    attrs: &[Attribute],
    level: Level,
    mut on_attr: impl FnMut(&Attribute),
    mut handle: impl FnMut(&'static str, &ParseNestedMeta<'_>) -> syn::Result<()>,
) {
    let mut seen: Vec<&'static str> = Vec::new();
    for attr in resource_attrs(attrs) {
        on_attr(attr);
        match &attr.meta {
            syn::Meta::Path(_) => continue,
            syn::Meta::NameValue(nv) => {
                cx.error_spanned_by(
                    nv,
                    "expected `#[resource]` or `#[resource(key = value, ...)]`, found `#[resource = ...]`",
                );
                continue;
            }
            syn::Meta::List(_) => {}
        }
        let parsed = attr.parse_nested_meta(|meta| {
            let Some(ident) = meta.path.get_ident() else {
                cx.error_spanned_by(
                    &meta.path,
                    format!(
                        "expected a key such as `timeout`, found a path\nexpected one of: {}",
                        list(level.known())
                    ),
                );
                return skip_value(&meta);
            };
            let name = ident.to_string();
            let Some(key) = level.known().iter().copied().find(|k| *k == name) else {
                cx.error_spanned_by(ident, level.unknown_key_message(&name));
                return skip_value(&meta);
            };
            if seen.contains(&key) {
                cx.error_spanned_by(
                    ident,
                    format!("duplicate key `{key}`: give it once per field or container"),
                );
                return skip_value(&meta);
            }
            seen.push(key);
            if let Err(e) = handle(key, &meta) {
                cx.syn_error(e);
                return skip_value(&meta);
            }
            if !meta.input.is_empty() && !meta.input.peek(Token![,]) {
                cx.error_at(
                    meta.input.span(),
                    format!("unexpected tokens after the value of `{key}`: separate keys with commas, like `#[resource(timeout = \"2s\", name = \"db\")]`"),
                );
                return skip_value(&meta);
            }
            Ok(())
        });
        if let Err(e) = parsed {
            cx.syn_error(e);
        }
    }
}

/// `key` with no value; `key = ...` is an error.
fn flag(key: &str, meta: &ParseNestedMeta<'_>) -> syn::Result<Span> {
    if meta.input.peek(Token![=]) || meta.input.peek(syn::token::Paren) {
        return Err(meta.error(format!("`{key}` takes no value: write `{key}` alone")));
    }
    Ok(meta.path.span())
}

/// The value after `key =`, with a message saying what to write when `=` is missing.
fn value<'a>(
    key: &str,
    example: &str,
    meta: &'a ParseNestedMeta<'a>,
) -> syn::Result<&'a syn::parse::ParseBuffer<'a>> {
    meta.value().map_err(|_| {
        syn::Error::new(
            meta.path.span(),
            format!("`{key}` needs a value: write `{key} = {example}`"),
        )
    })
}

/// A literal where a name is expected is the common mistake, and gets its own message.
fn no_literal(key: &str, expected: &str, input: &syn::parse::ParseBuffer<'_>) -> syn::Result<()> {
    if !input.peek(Lit) {
        return Ok(());
    }
    let lit: Lit = input.parse()?;
    let hint = match &lit {
        Lit::Str(s) => format!(": write `{key} = {}` without quotes", s.value()),
        _ => String::new(),
    };
    Err(syn::Error::new(
        lit.span(),
        format!("expected {expected} after `{key} =`, found a literal{hint}"),
    ))
}

/// `key = path`.
fn path_value(key: &str, meta: &ParseNestedMeta<'_>) -> syn::Result<Path> {
    let input = value(key, "path::to::async_fn", meta)?;
    no_literal(key, "a path to an async fn", input)?;
    input.parse::<Path>().map_err(|e| {
        syn::Error::new(
            e.span(),
            format!("expected a path to an async fn after `{key} =`, like `{key} = my_{key}`"),
        )
    })
}

/// `key = method`: the name of a method of the type.
fn method_value(key: &str, meta: &ParseNestedMeta<'_>) -> syn::Result<Ident> {
    let input = value(key, "method_name", meta)?;
    no_literal(key, "the name of an async method", input)?;
    let method = input.parse::<Ident>().map_err(|e| {
        syn::Error::new(
            e.span(),
            format!("expected the name of an async method of this type after `{key} =`, like `{key} = drain`"),
        )
    })?;
    if input.peek(Token![::]) {
        return Err(syn::Error::new(
            input.span(),
            format!(
                "`{key}` takes the name of a method of this type, not a path: write `{key} = {method}` for `Self::{method}`, or add a method that calls the function"
            ),
        ));
    }
    Ok(method)
}

/// `key = "string"`.
fn string_value(key: &str, example: &str, meta: &ParseNestedMeta<'_>) -> syn::Result<LitStr> {
    let input = value(key, example, meta)?;
    if input.peek(LitStr) {
        return input.parse();
    }
    let found = if input.peek(Lit) {
        "a literal of another kind"
    } else {
        "no string"
    };
    let span = input.span();
    Err(syn::Error::new(
        span,
        format!("`{key}` takes a string, found {found}: write `{key} = {example}`"),
    ))
}

fn timeout_value(meta: &ParseNestedMeta<'_>) -> syn::Result<Timeout> {
    let lit = string_value("timeout", "\"2s\"", meta)?;
    let millis = parse_deadline_ms(&lit.value()).map_err(|why| syn::Error::new(lit.span(), why))?;
    Ok(Timeout { millis })
}

// The duration grammar below is the one `resource_runtime::http::EndpointConfig` reads
// from configuration files (`resource-runtime/src/http/config.rs`): the same parser,
// the same rules and the same messages. A change here is a change there.

/// A duration in [humantime]'s grammar (`"500ms"`, `"2s"`, `"1m 30s"`, `"1.5s"`,
/// `"1h"`), in whole milliseconds: a timer keeps nothing finer, so a value that is not
/// a whole number of milliseconds is an error rather than silently rounded.
pub(crate) fn parse_duration_ms(text: &str) -> Result<u64, String> {
    let duration = humantime::parse_duration(text).map_err(|e| not_a_duration(text, &e))?;
    if duration.subsec_nanos() % 1_000_000 != 0 {
        let down = duration.as_millis();
        let hint = if down == 0 {
            "write \"1ms\"".to_owned()
        } else {
            format!("write \"{down}ms\" or \"{}ms\"", down + 1)
        };
        return Err(format!(
            "`{text}` is not a whole number of milliseconds, the finest step a deadline or delay keeps: {hint}"
        ));
    }
    u64::try_from(duration.as_millis()).map_err(|_| too_long(text))
}

/// A deadline: a duration that is not zero. A zero deadline would expire before the
/// work it bounds could run, so it is refused rather than given a meaning.
pub(crate) fn parse_deadline_ms(text: &str) -> Result<u64, String> {
    match parse_duration_ms(text)? {
        0 => Err(format!(
            "`{text}` is a zero deadline, which would cut what it bounds at once: give at least \"1ms\", or leave the deadline out"
        )),
        millis => Ok(millis),
    }
}

fn too_long(text: &str) -> String {
    format!("`{text}` is too long a duration: keep it under 500 years")
}

/// What a duration looks like, ending every message about a malformed one.
const DURATION_HINT: &str = "write numbers with units, like \"500ms\", \"2s\", \"1m 30s\" or \"1h\" (units: `ms`, `s`, `m`, `h`, `d`, `w`, and long names such as `sec`, `min`, `hours`)";

/// What is wrong with `text`, and what to write instead.
fn not_a_duration(text: &str, error: &humantime::DurationError) -> String {
    use humantime::DurationError as E;
    let detail = match error {
        E::Empty => return format!("an empty string is not a duration: {DURATION_HINT}"),
        E::UnknownUnit { unit, value, .. } if unit.is_empty() => {
            format!("the number needs a unit, like \"{value}s\" or \"{value}ms\"")
        }
        E::UnknownUnit { unit, .. } => format!("`{unit}` is not a unit"),
        E::NumberExpected(at) => match text.get(*at..).map(str::trim_start) {
            Some(rest) if !rest.is_empty() => format!("expected a number at `{rest}`"),
            _ => "expected a number".to_owned(),
        },
        E::InvalidCharacter(at) => match text.get(*at..).and_then(|rest| rest.chars().next()) {
            Some(c) => format!("unexpected `{c}`"),
            None => "unexpected character".to_owned(),
        },
        E::NumberOverflow if text.contains('.') => {
            return format!(
                "`{text}` is too long a duration, or finer than a millisecond: keep it under 500 years, in whole milliseconds"
            );
        }
        E::NumberOverflow => return too_long(text),
    };
    format!("`{text}` is not a duration: {detail}; {DURATION_HINT}")
}

pub(crate) fn field_attrs(cx: &Ctxt, attrs: &[Attribute]) -> FieldAttrs {
    let mut out = FieldAttrs::default();
    let mut marker = None;
    let mut keys = Vec::new();
    let mut skip = None;
    let mut close = None;
    let mut enter = None;
    let mut timeout = None;
    let mut group = None;
    let mut name = None;
    let mut boxed = None;
    for_each_key(
        cx,
        attrs,
        Level::Field,
        |attr| {
            marker.get_or_insert(attr.span());
        },
        |key, meta| {
            keys.push((key, meta.path.span()));
            match key {
                "skip" => skip = Some(flag(key, meta)?),
                "close" => close = Some(path_value(key, meta)?),
                "enter" => enter = Some(path_value(key, meta)?),
                "timeout" => timeout = Some(timeout_value(meta)?),
                "group" => group = Some(string_value(key, "\"io\"", meta)?),
                "name" => name = Some(string_value(key, "\"label\"", meta)?),
                "boxed" => boxed = Some(flag(key, meta)?),
                _ => {}
            }
            Ok(())
        },
    );
    out.marker = marker;
    out.keys = keys;
    out.skip = skip;
    out.close = close;
    out.enter = enter;
    out.timeout = timeout;
    out.group = group;
    out.name = name;
    out.boxed = boxed;
    out
}

pub(crate) fn container_attrs(cx: &Ctxt, attrs: &[Attribute]) -> ContainerAttrs {
    let mut out = ContainerAttrs::default();
    for_each_key(
        cx,
        attrs,
        Level::Container,
        |attr| {
            if let syn::Meta::Path(path) = &attr.meta {
                cx.error_spanned_by(
                    path,
                    "a bare `#[resource]` marks a field: on a struct or enum, give keys such as `#[resource(timeout = \"5s\")]`",
                );
            }
        },
        |key, meta| {
            match key {
                "concurrent" => out.concurrent = Some(flag(key, meta)?),
                "timeout" => out.timeout = Some(timeout_value(meta)?),
                "before_close" => out.before_close = Some(method_value(key, meta)?),
                "after_enter" => out.after_enter = Some(method_value(key, meta)?),
                "bound" => {
                    let lit = string_value(key, "\"T: AsyncResource\"", meta)?;
                    let predicates = lit
                        .parse_with(Punctuated::<WherePredicate, Token![,]>::parse_terminated)
                        .map_err(|e| {
                            syn::Error::new(
                                lit.span(),
                                format!("malformed `bound`: {e}; write where-clause predicates, like `bound = \"T: AsyncResource, U: Send\"`"),
                            )
                        })?;
                    out.bound = Some(predicates.into_iter().collect());
                }
                "crate" => {
                    let input = value(key, "\"resource_runtime\"", meta)?;
                    let path = if input.peek(LitStr) {
                        let lit: LitStr = input.parse()?;
                        lit.parse::<Path>().map_err(|_| {
                            syn::Error::new(
                                lit.span(),
                                format!("`crate` takes the path of the runtime crate, like `crate = \"resource_runtime\"`; `{}` is not a path", lit.value()),
                            )
                        })?
                    } else {
                        input.parse::<Path>().map_err(|e| {
                            syn::Error::new(e.span(), "`crate` takes the path of the runtime crate, like `crate = \"resource_runtime\"`")
                        })?
                    };
                    out.krate = Some(path);
                }
                _ => {}
            }
            Ok(())
        },
    );
    out
}

/// Reports every `#[resource]` on an item where it has no meaning (an enum variant, a
/// union field), with `why`.
pub(crate) fn reject(cx: &Ctxt, attrs: &[Attribute], why: &str) {
    for attr in resource_attrs(attrs) {
        cx.error_spanned_by(attr, why);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Inputs and what a deadline makes of them: whole milliseconds, or the whole message
    /// (`HINT` standing for [`DURATION_HINT`]). A delay reads them the same, except that
    /// a zero is `Ok(0)`. The same table is in the derive (`resource-derive/src/attr.rs`)
    /// and in the endpoint's configuration (`resource-runtime/src/http/config.rs`), and a
    /// test of the latter checks that the two are equal.
    const DURATION_CASES: &[(&str, Result<u64, &str>)] = &[
        ("500ms", Ok(500)),
        ("2s", Ok(2_000)),
        ("2 s", Ok(2_000)),
        (" 2s ", Ok(2_000)),
        ("2 seconds", Ok(2_000)),
        ("1.5s", Ok(1_500)),
        ("1m", Ok(60_000)),
        ("2 min", Ok(120_000)),
        ("1m 30s", Ok(90_000)),
        ("1m30s", Ok(90_000)),
        ("1h", Ok(3_600_000)),
        ("1d", Ok(86_400_000)),
        ("1w", Ok(604_800_000)),
        ("2000us", Ok(2)),
        (
            "0s",
            Err(
                "`0s` is a zero deadline, which would cut what it bounds at once: give at least \"1ms\", or leave the deadline out",
            ),
        ),
        (
            "0ms",
            Err(
                "`0ms` is a zero deadline, which would cut what it bounds at once: give at least \"1ms\", or leave the deadline out",
            ),
        ),
        (
            "0",
            Err(
                "`0` is a zero deadline, which would cut what it bounds at once: give at least \"1ms\", or leave the deadline out",
            ),
        ),
        (
            "0.0s",
            Err(
                "`0.0s` is a zero deadline, which would cut what it bounds at once: give at least \"1ms\", or leave the deadline out",
            ),
        ),
        (
            "1500us",
            Err(
                "`1500us` is not a whole number of milliseconds, the finest step a deadline or delay keeps: write \"1ms\" or \"2ms\"",
            ),
        ),
        (
            "1.5ms",
            Err(
                "`1.5ms` is not a whole number of milliseconds, the finest step a deadline or delay keeps: write \"1ms\" or \"2ms\"",
            ),
        ),
        (
            "500us",
            Err(
                "`500us` is not a whole number of milliseconds, the finest step a deadline or delay keeps: write \"1ms\"",
            ),
        ),
        (
            "1ns",
            Err(
                "`1ns` is not a whole number of milliseconds, the finest step a deadline or delay keeps: write \"1ms\"",
            ),
        ),
        ("", Err("an empty string is not a duration: HINT")),
        ("  ", Err("an empty string is not a duration: HINT")),
        (
            "2",
            Err("`2` is not a duration: the number needs a unit, like \"2s\" or \"2ms\"; HINT"),
        ),
        (
            "1m 30",
            Err(
                "`1m 30` is not a duration: the number needs a unit, like \"30s\" or \"30ms\"; HINT",
            ),
        ),
        ("2x", Err("`2x` is not a duration: `x` is not a unit; HINT")),
        (
            "2 fortnights",
            Err("`2 fortnights` is not a duration: `fortnights` is not a unit; HINT"),
        ),
        ("2S", Err("`2S` is not a duration: `S` is not a unit; HINT")),
        (
            "soon",
            Err("`soon` is not a duration: expected a number at `soon`; HINT"),
        ),
        (
            "-1s",
            Err("`-1s` is not a duration: expected a number at `-1s`; HINT"),
        ),
        (
            "2 seconds later",
            Err("`2 seconds later` is not a duration: expected a number at `later`; HINT"),
        ),
        (
            "1,5s",
            Err("`1,5s` is not a duration: unexpected `,`; HINT"),
        ),
        ("1.s", Err("`1.s` is not a duration: unexpected `.`; HINT")),
        (
            "18446744073709551615h",
            Err("`18446744073709551615h` is too long a duration: keep it under 500 years"),
        ),
        (
            "18446744073709551615s",
            Err("`18446744073709551615s` is too long a duration: keep it under 500 years"),
        ),
        (
            "99999999999999999999ms",
            Err("`99999999999999999999ms` is too long a duration: keep it under 500 years"),
        ),
        (
            "0.5ns",
            Err(
                "`0.5ns` is too long a duration, or finer than a millisecond: keep it under 500 years, in whole milliseconds",
            ),
        ),
    ];

    /// What the table says of `text` as a deadline (`zero: None`) or as a delay.
    fn expected(want: &Result<u64, &str>, zero: Option<u64>) -> Result<u64, String> {
        match (want, zero) {
            (Err(message), Some(zero)) if message.contains("zero deadline") => Ok(zero),
            _ => want.map_err(|message| message.replace("HINT", DURATION_HINT)),
        }
    }

    #[test]
    fn deadlines_follow_the_shared_table() {
        for (text, want) in DURATION_CASES {
            assert_eq!(parse_deadline_ms(text), expected(want, None), "{text:?}");
        }
    }

    #[test]
    fn durations_follow_the_shared_table_and_take_zero() {
        for (text, want) in DURATION_CASES {
            assert_eq!(parse_duration_ms(text), expected(want, Some(0)), "{text:?}");
        }
    }

    #[test]
    fn suggestions_only_for_near_misses() {
        assert_eq!(suggestion("timout", FIELD_KEYS), Some("timeout"));
        assert_eq!(suggestion("clsoe", FIELD_KEYS), Some("close"));
        assert_eq!(suggestion("concurent", CONTAINER_KEYS), Some("concurrent"));
        assert_eq!(suggestion("zzz", FIELD_KEYS), None);
    }
}
