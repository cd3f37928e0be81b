//! A small argument reader: positionals and `--flag value` pairs, refusing unknown flags.

use crate::Failure;
use std::collections::HashMap;

pub struct Args {
    pub positional: Vec<String>,
    flags: HashMap<String, String>,
}

impl Args {
    /// Read `args`; `flags` are the options that take a value.
    pub fn parse(args: &[String], flags: &[&str], usage: &str) -> Result<Args, Failure> {
        let mut out = Args { positional: Vec::new(), flags: HashMap::new() };
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            if let Some(name) = arg.strip_prefix("--") {
                if !flags.contains(&name) {
                    return Err(Failure::Input(format!("unknown option --{name}\n{usage}")));
                }
                let value = it.next().ok_or_else(|| Failure::Input(format!("--{name} needs a value\n{usage}")))?;
                if out.flags.insert(name.to_string(), value.clone()).is_some() {
                    return Err(Failure::Input(format!("--{name} is given twice")));
                }
            } else {
                out.positional.push(arg.clone());
            }
        }
        Ok(out)
    }

    pub fn get(&self, flag: &str) -> Option<&str> {
        self.flags.get(flag).map(String::as_str)
    }

    /// The one positional argument (a file), or a usage error.
    pub fn file(&self, what: &str, usage: &str) -> Result<&str, Failure> {
        match self.positional.as_slice() {
            [one] => Ok(one),
            [] => Err(Failure::Input(format!("{what} is needed\n{usage}"))),
            [_, extra, ..] => Err(Failure::Input(format!("unexpected argument {extra:?}\n{usage}"))),
        }
    }
}
