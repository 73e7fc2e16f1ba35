//! Where a command's report goes: text for people, or JSON; progress bars on the standard
//! error; confirmations.

use std::io::{BufRead, IsTerminal, Write};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use super::AdminError;

pub(super) struct Output<'a> {
    out: &'a mut (dyn Write + Send),
    json: bool,
}

impl<'a> Output<'a> {
    pub(super) fn new(out: &'a mut (dyn Write + Send), json: bool) -> Self {
        Output { out, json }
    }

    /// Writes a report: its JSON with `--json`, else the text `human` writes.
    pub(super) fn report<T: Serialize>(
        &mut self,
        report: &T,
        human: impl FnOnce(&T, &mut dyn Write) -> std::io::Result<()>,
    ) -> Result<(), AdminError> {
        if self.json {
            serde_json::to_writer_pretty(&mut *self.out, report).map_err(std::io::Error::from)?;
            writeln!(self.out)?;
        } else {
            human(report, &mut *self.out)?;
        }
        self.out.flush()?;
        Ok(())
    }

    /// Whether the report is JSON (`--json`).
    pub(super) fn is_json(&self) -> bool {
        self.json
    }

    /// Writes `text` as it is: SQL for a review.
    pub(super) fn raw(&mut self, text: &str) -> Result<(), AdminError> {
        self.out.write_all(text.as_bytes())?;
        self.out.flush()?;
        Ok(())
    }

    /// Writes one item of a stream of them: a JSON line with `--json`, else a text line.
    pub(super) fn item<T: Serialize>(
        &mut self,
        item: &T,
        human: impl FnOnce(&T) -> String,
    ) -> Result<(), AdminError> {
        if self.json {
            serde_json::to_writer(&mut *self.out, item).map_err(std::io::Error::from)?;
            writeln!(self.out)?;
        } else {
            writeln!(self.out, "{}", human(item))?;
        }
        self.out.flush()?;
        Ok(())
    }

    /// A progress bar of `len` steps on the standard error; hidden with `--json`, and where
    /// the standard error is not a terminal.
    pub(super) fn progress(&self, len: u64, what: &str) -> ProgressBar {
        if self.json || !std::io::stderr().is_terminal() {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::new(len).with_message(what.to_owned());
        let style =
            ProgressStyle::with_template("{msg} [{bar:32}] {human_pos}/{human_len} {per_sec} ETA {eta}")
                .expect("the template is valid")
                .progress_chars("=> ");
        bar.set_style(style);
        bar.enable_steady_tick(Duration::from_millis(200));
        bar
    }
}

/// Asks on the terminal whether to go on, unless `yes` was given. Where the standard input is
/// not a terminal, refuses instead of waiting for an answer that will not come.
pub(super) fn confirm(question: &str, yes: bool) -> Result<(), AdminError> {
    if yes {
        return Ok(());
    }
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return Err(AdminError::Refused(format!(
            "{question}: not confirmed (pass --yes where nobody can answer)"
        )));
    }
    eprint!("{question}? [y/N] ");
    let mut answer = String::new();
    stdin.lock().read_line(&mut answer)?;
    match answer.trim() {
        "y" | "Y" | "yes" => Ok(()),
        _ => Err(AdminError::Refused(format!("{question}: not confirmed"))),
    }
}

/// `1234567` as `1,234,567`.
pub(super) fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A duration as people read it: `850 ms`, `12.3 s`.
pub(super) fn took(elapsed: Duration) -> String {
    if elapsed < Duration::from_secs(1) {
        format!("{} ms", elapsed.as_millis())
    } else {
        format!("{:.1} s", elapsed.as_secs_f64())
    }
}

/// Items per second over `elapsed`.
pub(super) fn rate(items: u64, elapsed: Duration) -> f64 {
    let seconds = elapsed.as_secs_f64();
    if seconds > 0.0 {
        items as f64 / seconds
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_are_grouped() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1234567), "1,234,567");
    }
}
