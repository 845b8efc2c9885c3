//! Named choices (training mode, backbone preset, checkpoint family, ...): each is an enum
//! implementing clap's `ValueEnum`, so the command line lists exactly the values it accepts, and
//! its `FromStr` (configuration files, library callers) goes through the same names.

use std::fmt;

use clap::ValueEnum;

use crate::error::{Error, Result};

/// The accepted names of `T`, as `a, b or c`.
pub fn names<T: ValueEnum>() -> String {
    let names: Vec<String> = T::value_variants()
        .iter()
        .filter_map(|v| v.to_possible_value())
        .map(|p| p.get_name().to_string())
        .collect();
    match names.split_last() {
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    }
}

/// Parse `s` (case-insensitive, aliases included) as a `T`; the error names `what` and lists
/// the accepted values.
pub fn parse<T: ValueEnum>(what: &str, s: &str) -> Result<T> {
    T::from_str(s.trim(), true)
        .map_err(|_| Error::Config(format!("unknown {what} `{s}` (expected {})", names::<T>())))
}

/// Write `v`'s command-line name: the `Display` of every named choice, so printing a value and
/// parsing it back agree.
pub fn write_name<T: ValueEnum>(v: &T, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    match v.to_possible_value() {
        Some(p) => f.write_str(p.get_name()),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::TrainMode;

    #[test]
    fn errors_list_every_accepted_name() {
        let e = parse::<TrainMode>("training mode", "everything").unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid configuration: unknown training mode `everything` (expected head-only, full, \
             reversible or adapter)"
        );
        assert_eq!(
            parse::<TrainMode>("training mode", " Head-Only").unwrap(),
            TrainMode::HeadOnly
        );
        for m in TrainMode::ALL {
            assert_eq!(parse::<TrainMode>("mode", &m.to_string()).unwrap(), m);
        }
    }
}
