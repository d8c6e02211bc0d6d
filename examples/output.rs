//! Printing for the examples: `println!` and `print!`, except that an output closed
//! early (`cargo run --example quickstart | head`) is not a panic. The text is dropped
//! and the run goes on to its close. Each example includes it with
//! `#[path = "output.rs"] mod output;`.

/// `println!` that drops its line when standard output is closed.
macro_rules! say {
    ($($arg:tt)*) => {{
        use ::std::io::Write as _;
        let _ = ::std::writeln!(::std::io::stdout().lock(), $($arg)*);
    }};
}

/// `print!` that drops its text when standard output is closed.
#[allow(unused_macros, reason = "not every example prints part of a line")]
macro_rules! say_part {
    ($($arg:tt)*) => {{
        use ::std::io::Write as _;
        let _ = ::std::write!(::std::io::stdout().lock(), $($arg)*);
    }};
}

pub(crate) use say;
#[allow(unused_imports, reason = "not every example prints part of a line")]
pub(crate) use say_part;
