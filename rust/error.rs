//! The core's one error type. Every variant is a problem with the caller's input; the
//! Python bindings map all of them to `ValueError` with the message as written here.

use std::fmt;

#[derive(Debug, Clone, PartialEq)]
pub enum CoreError {
    /// Losses that cannot define a problem: empty, NaN or infinite.
    Losses(String),
    /// A reference distribution that is not one: negative, non-finite, all zero, wrong length.
    Reference(String),
    /// Group labels that are negative or of the wrong length.
    Groups(String),
    /// Radius, penalty or alpha missing, doubled, out of range, or not meaningful for the set.
    Budget(String),
    /// Shapes that do not fit together.
    Shape(String),
    /// An ambiguity set this library does not know.
    Ambiguity(String),
    /// Wasserstein geometry: features or cost matrix that cannot define distances.
    Geometry(String),
}

impl fmt::Display for CoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CoreError::Losses(m)
            | CoreError::Reference(m)
            | CoreError::Groups(m)
            | CoreError::Budget(m)
            | CoreError::Shape(m)
            | CoreError::Ambiguity(m)
            | CoreError::Geometry(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for CoreError {}

pub type Result<T> = std::result::Result<T, CoreError>;
