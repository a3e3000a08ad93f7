//! A small command-line parser: `--name value` options and positional arguments.

/// A usage error, shown with the usage text.
pub struct Usage(pub String);

/// Whether a command's arguments ask for its usage: `-h` or `--help` anywhere before `--`
/// (even in a value's place, so `explain --config --help` is help, not a file named `--help`).
pub fn wants_help(argv: &[String]) -> bool {
    argv.iter().take_while(|arg| *arg != "--").any(|arg| arg == "-h" || arg == "--help")
}

/// Options and positional arguments of one command.
pub struct Parsed {
    options: Vec<(String, String)>,
    /// Arguments that are not options, in order.
    pub positional: Vec<String>,
}

impl Parsed {
    /// Splits `argv`, accepting only the option names in `known` (each takes a value).
    pub fn new(argv: &[String], known: &[&str]) -> Result<Parsed, Usage> {
        let mut options = Vec::new();
        let mut positional = Vec::new();
        let mut rest = argv.iter();
        while let Some(arg) = rest.next() {
            if arg == "--" {
                positional.extend(rest.by_ref().cloned());
            } else if let Some(name) = arg.strip_prefix("--") {
                let (name, value) = match name.split_once('=') {
                    Some((name, value)) => (name, Some(value)),
                    None => (name, None),
                };
                if !known.contains(&name) {
                    return Err(Usage(format!("unknown option --{name}")));
                }
                let value = match value {
                    Some(value) => value.to_string(),
                    None => {
                        rest.next().ok_or_else(|| Usage(format!("--{name} needs a value")))?.clone()
                    }
                };
                options.push((name.to_string(), value));
            } else {
                positional.push(arg.clone());
            }
        }
        Ok(Parsed { options, positional })
    }

    /// Every value given for `name`, in order (comma-separated lists split when `split`).
    pub fn all(&self, name: &str, split: bool) -> Vec<&str> {
        let values = self.options.iter().filter(|(n, _)| n == name).map(|(_, v)| v.as_str());
        if split {
            values.flat_map(|v| v.split(',')).map(str::trim).filter(|v| !v.is_empty()).collect()
        } else {
            values.collect()
        }
    }

    /// The last value given for `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.options.iter().rev().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}
