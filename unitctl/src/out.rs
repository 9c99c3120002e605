//! Writing to stdout. A reader that stops reading (`unitctl status | head`) ends unitctl
//! quietly with exit 0, as it would end `grep`, instead of a panic; any other failure to
//! write (a full disk) ends it with a message and exit 1.

use std::io::Write;

/// Write `args` to stdout (see the module's note on a closed pipe).
pub fn write(args: std::fmt::Arguments<'_>) {
    let mut stdout = std::io::stdout().lock();
    if let Err(error) = stdout.write_fmt(args) {
        gone(&error);
    }
}

/// Flush stdout, e.g. after a prompt without a newline.
pub fn flush() {
    if let Err(error) = std::io::stdout().lock().flush() {
        gone(&error);
    }
}

/// End the program after stdout failed with `error`: quietly on a closed pipe.
pub fn gone(error: &std::io::Error) -> ! {
    if error.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    let _ = writeln!(std::io::stderr(), "cannot write to stdout: {error}");
    std::process::exit(i32::from(crate::EXIT_FINDING));
}

/// Like `println!`, through [`write`].
macro_rules! outln {
    () => {
        $crate::out::write(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::out::write(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// Like `print!`, through [`write`].
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::out::write(format_args!($($arg)*))
    };
}
