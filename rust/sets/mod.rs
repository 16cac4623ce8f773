//! The mathematics: one file per ambiguity set, each opening with the set's definition, the
//! worst case and its dual, and a link to the section of docs/method.md it follows; and the
//! sets over groups.

pub mod chi2;
pub mod cvar;
pub mod groups;
pub mod kl;
pub mod tv;
pub mod wasserstein;
