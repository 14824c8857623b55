//! Wire types shared by the `txlab` CLI and the checkout services.
//!
//! - [`order`]: the public checkout API (`POST /orders`, `GET /orders/{id}`, cancel).
//! - [`participant`]: the calls the order service makes to payment, inventory
//!   and shipping, and their replies.
//! - [`admin`]: reset, seed and audit snapshots, used by the lab between cells.
//! - [`event`]: messages that travel over Kafka.
//! - [`fault`]: the per-request fault header a scenario uses to fail one step.
//! - [`ErrorBody`]: the JSON body of every non-2xx reply.
//!
//! This crate does no IO, so both sides agree on the wire by construction.

pub mod admin;
pub mod event;
pub mod fault;
pub mod order;
pub mod participant;

use serde::{Deserialize, Serialize};

/// The JSON body of every error reply: a stable machine-readable `error`
/// code and a sentence for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    pub message: String,
}

/// The JSON Schema of a [`text_enum!`] type: a string, one of its texts.
#[cfg(feature = "schema")]
#[doc(hidden)]
#[macro_export]
macro_rules! __text_enum_schema {
    ($name:ident, $what:literal, $($text:literal),+) => {
        impl $crate::__schemars::JsonSchema for $name {
            fn schema_name() -> ::std::borrow::Cow<'static, str> {
                ::std::borrow::Cow::Borrowed(stringify!($name))
            }
            fn json_schema(_: &mut $crate::__schemars::SchemaGenerator) -> $crate::__schemars::Schema {
                $crate::__schemars::json_schema!({
                    "description": concat!("a ", $what),
                    "type": "string",
                    "enum": [$($text),+]
                })
            }
        }
    };
}

#[cfg(not(feature = "schema"))]
#[doc(hidden)]
#[macro_export]
macro_rules! __text_enum_schema {
    ($($any:tt)*) => {};
}

/// schemars, for the impls [`text_enum!`] writes in other crates.
#[cfg(feature = "schema")]
#[doc(hidden)]
pub use schemars as __schemars;

/// Declares an enum whose values travel and are stored as text, from one
/// list of `Variant = "text"` pairs: `ALL`, `as_str`, `parse`, `Display`,
/// `FromStr` (its error names `$what` and the accepted values) and serde
/// all come from that list, so a literal cannot drift between the wire, the
/// database and the audit. Needs `serde` as a dependency where it is used.
#[macro_export]
macro_rules! text_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident ($what:literal) {
            $( $(#[$vmeta:meta])* $variant:ident = $text:literal ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        $vis enum $name {
            $( $(#[$vmeta])* $variant ),+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: [$name; 0 $(+ $crate::text_enum!(@one $variant))+] = [$($name::$variant),+];

            /// The value's text, as stored and sent.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }

            /// The texts of `values`, e.g. to bind as a SQL array.
            pub fn texts(values: &[$name]) -> Vec<&'static str> {
                values.iter().map(|v| v.as_str()).collect()
            }

            /// The value a text names, if any.
            pub fn parse(s: &str) -> Option<$name> {
                match s {
                    $($text => Some($name::$variant),)+
                    _ => None,
                }
            }
        }

        $crate::__text_enum_schema!($name, $what, $($text),+);

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl ::std::str::FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                $name::parse(s).ok_or_else(|| format!("unknown {} `{}`; expected one of {}", $what, s, [$($text),+].join(", ")))
            }
        }

        /// For reading the text back from a database row.
        impl ::std::convert::TryFrom<String> for $name {
            type Error = String;
            fn try_from(s: String) -> Result<Self, String> {
                s.parse()
            }
        }

        impl ::serde::Serialize for $name {
            fn serialize<S: ::serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> ::serde::Deserialize<'de> for $name {
            fn deserialize<D: ::serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = <::std::borrow::Cow<'de, str> as ::serde::Deserialize>::deserialize(deserializer)?;
                text.parse().map_err(::serde::de::Error::custom)
            }
        }
    };
    (@one $variant:ident) => {
        1
    };
}

text_enum! {
    /// The five services of the checkout. One binary, `txlab-svc <role>`, runs any of them.
    pub enum Role ("role") {
        Order = "order",
        Payment = "payment",
        Inventory = "inventory",
        Shipping = "shipping",
        Notification = "notification",
    }
}

text_enum! {
    /// The transaction method a deployment runs (`TX_MODE`).
    pub enum TxMode ("transaction method") {
        Twopc = "twopc",
        Tcc = "tcc",
        Outbox = "outbox",
        SagaChor = "saga_chor",
        SagaOrch = "saga_orch",
    }
}

impl TxMode {
    /// Whether the services coordinate through events (no coordinator calls).
    pub fn is_event_driven(self) -> bool {
        matches!(self, TxMode::SagaChor | TxMode::Outbox)
    }
}

text_enum! {
    /// A participant's place in the checkout, in forward order. Stored as
    /// its index (0, 1, 2) in the order service's step logs.
    pub enum Step ("checkout step") {
        Payment = "payment",
        Inventory = "inventory",
        Shipping = "shipping",
    }
}

impl Step {
    /// Position in the checkout: 0 payment, 1 inventory, 2 shipping.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The step at `index`, if there is one.
    pub fn at(index: usize) -> Option<Step> {
        Step::ALL.get(index).copied()
    }

    /// The step after this one.
    pub fn next(self) -> Option<Step> {
        Step::at(self.index() + 1)
    }

    /// The service that carries out this step.
    pub fn role(self) -> Role {
        match self {
            Step::Payment => Role::Payment,
            Step::Inventory => Role::Inventory,
            Step::Shipping => Role::Shipping,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_and_mode_names_round_trip() {
        for r in Role::ALL {
            assert_eq!(r.as_str().parse::<Role>().unwrap(), r);
            assert_eq!(serde_json::to_string(&r).unwrap(), format!("\"{r}\""));
        }
        for m in TxMode::ALL {
            assert_eq!(m.as_str().parse::<TxMode>().unwrap(), m);
            assert_eq!(serde_json::to_string(&m).unwrap(), format!("\"{m}\""));
        }
        assert!("saga".parse::<TxMode>().unwrap_err().contains("saga_orch"));
        assert_eq!(
            serde_json::from_str::<Role>("\"clerk\"").unwrap_err().to_string(),
            "unknown role `clerk`; expected one of order, payment, inventory, shipping, notification"
        );
        for s in Step::ALL {
            assert_eq!(Step::at(s.index()), Some(s));
            assert_eq!(s.role().as_str(), s.as_str(), "a step is named after its service");
        }
        assert_eq!(
            (Step::Payment.next(), Step::Shipping.next()),
            (Some(Step::Inventory), None)
        );
    }
}
