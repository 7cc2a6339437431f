//! The log of every init program: each event one line, `TIME LEVEL TARGET: MESSAGE key=value`
//! as tracing-subscriber's `fmt` writes it, in one write to a writer made per event (one
//! `/dev/kmsg` record per event). Written here rather than taken from tracing-subscriber (51 KB
//! of PID 1 with its span registry) because flint's programs log events, never spans.

use std::fmt::Write as _;
use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::level_filters::LevelFilter;
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

/// Which events are logged: a level for all targets, and levels for targets starting with a
/// prefix (the longest matching prefix wins), as `RUST_LOG` names them.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    default: LevelFilter,
    targets: Vec<(String, LevelFilter)>,
}

impl Filter {
    /// Everything at `level` and above.
    pub fn at(level: Level) -> Filter {
        Filter { default: LevelFilter::from_level(level), targets: Vec::new() }
    }

    /// `LEVEL`, `TARGET=LEVEL` or `TARGET` (every level), comma-separated; levels are `trace`,
    /// `debug`, `info`, `warn`, `error` or `off`. Unnamed targets stay at `info` unless a bare
    /// level says otherwise. (No span patterns: PID 1 carries no regex engine.)
    pub fn parse(spec: &str) -> Result<Filter, String> {
        let mut filter = Filter::at(Level::INFO);
        let level = |text: &str| {
            text.parse::<LevelFilter>().map_err(|_| format!("{text:?} is not a level (trace ... error, off)"))
        };
        for directive in spec.split(',').map(str::trim).filter(|d| !d.is_empty()) {
            match directive.split_once('=') {
                Some((target, text)) if !target.is_empty() => filter.targets.push((target.into(), level(text)?)),
                Some(_) => return Err(format!("{directive:?} names no target before '='")),
                None => match level(directive) {
                    Ok(l) => filter.default = l,
                    Err(_) if directive.bytes().all(|b| b.is_ascii_alphanumeric() || b"_:-".contains(&b)) => {
                        filter.targets.push((directive.into(), LevelFilter::TRACE))
                    }
                    Err(e) => return Err(e),
                },
            }
        }
        // Longest first, so that the first match is the most specific.
        filter.targets.sort_by_key(|t| std::cmp::Reverse(t.0.len()));
        Ok(filter)
    }

    /// Whether an event of `level` from `target` is logged.
    pub fn enables(&self, target: &str, level: &Level) -> bool {
        let limit = self.targets.iter().find(|(t, _)| target.starts_with(t.as_str())).map_or(self.default, |t| t.1);
        *level <= limit
    }

    fn most_verbose(&self) -> LevelFilter {
        self.targets.iter().map(|t| t.1).fold(self.default, LevelFilter::max)
    }
}

/// Formats events and hands each line to a writer `make_writer` returns.
pub struct Logger<F> {
    filter: Filter,
    colours: bool,
    make_writer: F,
}

impl<F, W> Logger<F>
where
    F: Fn() -> W + Send + Sync + 'static,
    W: Write,
{
    /// A logger; `colours` puts ANSI colours on the level (for a terminal).
    pub fn new(filter: Filter, colours: bool, make_writer: F) -> Self {
        Logger { filter, colours, make_writer }
    }

    /// Makes this the process's logger, unless one is already set.
    pub fn install(self) {
        let _ = tracing::subscriber::set_global_default(self);
    }

    /// The line an event is written as, with its newline.
    fn line(&self, event: &Event) -> String {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let seconds = flist::utc::rfc3339(now.as_secs());
        let seconds = seconds.strip_suffix('Z').unwrap_or(&seconds);
        let meta = event.metadata();
        let level = *meta.level();
        let mut line = format!("{seconds}.{:06}Z ", now.subsec_micros());
        let name = match level {
            Level::TRACE => ("TRACE", "35"),
            Level::DEBUG => ("DEBUG", "34"),
            Level::INFO => (" INFO", "32"),
            Level::WARN => (" WARN", "33"),
            Level::ERROR => ("ERROR", "31"),
        };
        match self.colours {
            true => _ = write!(line, "\x1b[{}m{}\x1b[0m ", name.1, name.0),
            false => _ = write!(line, "{} ", name.0),
        }
        _ = write!(line, "{}: ", meta.target());
        event.record(&mut Fields { line: &mut line, first: true });
        line.push('\n');
        line
    }
}

/// Writes an event's message, then its other fields as ` name=value`.
struct Fields<'a> {
    line: &'a mut String,
    first: bool,
}

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let separator = if std::mem::take(&mut self.first) { "" } else { " " };
        match field.name() {
            "message" => _ = write!(self.line, "{separator}{value:?}"),
            name => _ = write!(self.line, "{separator}{}={value:?}", name.strip_prefix("r#").unwrap_or(name)),
        }
    }
}

impl<F, W> Subscriber for Logger<F>
where
    F: Fn() -> W + Send + Sync + 'static,
    W: Write,
{
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.filter.enables(metadata.target(), metadata.level())
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(self.filter.most_verbose())
    }

    fn event(&self, event: &Event<'_>) {
        if self.enabled(event.metadata()) {
            let _ = (self.make_writer)().write_all(self.line(event).as_bytes());
        }
    }

    // Spans are not logged: each is the same placeholder, entered and left without a trace.
    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn rust_log_names_levels_and_targets_and_the_longest_prefix_wins() {
        let f = Filter::parse("warn,flint_init=debug,flint_init::net=off,fuser").unwrap();
        assert!(f.enables("flint_init::boot", &Level::DEBUG));
        assert!(!f.enables("flint_init::boot", &Level::TRACE));
        assert!(!f.enables("flint_init::net", &Level::ERROR));
        assert!(f.enables("fuser::request", &Level::TRACE));
        assert!(f.enables("ureq", &Level::WARN) && !f.enables("ureq", &Level::INFO));
        assert_eq!(f.most_verbose(), LevelFilter::TRACE);
        assert_eq!(Filter::parse("").unwrap(), Filter::at(Level::INFO));
        assert_eq!(Filter::parse(" DEBUG ").unwrap(), Filter::at(Level::DEBUG));
        for bad in ["=info", "a=loud", "what ever", "a=b=c"] {
            assert!(Filter::parse(bad).is_err(), "{bad}");
        }
    }

    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<String>>>);

    impl Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().push(String::from_utf8(buf.to_vec()).unwrap());
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn each_event_is_one_write_of_one_line_with_its_fields() {
        let lines = Lines::default();
        let writer = lines.clone();
        let logger = Logger::new(Filter::parse("info").unwrap(), false, move || writer.clone());
        tracing::subscriber::with_default(logger, || {
            tracing::info!(chunks = 3, store = "http://a", "mounted {}", "base");
            tracing::debug!("not shown");
            tracing::warn!(target: "flint_init::net", r#type = "dhcp", "no lease");
            let _span = tracing::info_span!("ignored").entered();
            tracing::error!("inside a span");
        });
        let lines = lines.0.lock().unwrap();
        assert_eq!(lines.len(), 3, "{lines:?}");
        let shape = |l: &str| {
            let (time, rest) = l.split_once(' ').unwrap();
            assert!(time.len() == 27 && time.ends_with('Z') && flist::utc::parse_rfc3339(time).is_ok(), "{time}");
            rest.to_string()
        };
        let this = module_path!();
        assert_eq!(shape(&lines[0]), format!(" INFO {this}: mounted base chunks=3 store=\"http://a\"\n"));
        assert_eq!(shape(&lines[1]), " WARN flint_init::net: no lease type=\"dhcp\"\n");
        assert_eq!(shape(&lines[2]), format!("ERROR {this}: inside a span\n"));
    }
}
