//! How the command line spells the domain's enums. The library's types stay free of clap
//! (a broker that links only the client compiles no CLI crates); their command-line names
//! and help live here, beside the flags that use them.

use clap::ValueEnum;
use clap::builder::PossibleValue;

use crate::client::Protocol;
use crate::sds::UnknownNamePolicy;

impl ValueEnum for UnknownNamePolicy {
    fn value_variants<'a>() -> &'a [Self] {
        &[Self::Hold, Self::NotFound]
    }

    fn to_possible_value(&self) -> Option<PossibleValue> {
        Some(match self {
            Self::Hold => PossibleValue::new("hold")
                .help("Say nothing until the resource appears, then push it"),
            Self::NotFound => PossibleValue::new("not-found").help(
                "Delta: answer at once with the name in `removed_resources`. \
                 (SotW cannot express absence for Secrets, so it holds.)",
            ),
        })
    }
}

impl ValueEnum for Protocol {
    fn value_variants<'a>() -> &'a [Self] {
        &[Self::Delta, Self::Sotw]
    }

    fn to_possible_value(&self) -> Option<PossibleValue> {
        Some(match self {
            Self::Delta => PossibleValue::new("delta"),
            Self::Sotw => PossibleValue::new("sotw"),
        })
    }
}
