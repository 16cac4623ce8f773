//! The machinery under the sets: one validated problem (`batch`), the passes over the losses
//! (`passes`), the weighted selection of CVaR and TV (`select`), the binned warm start of the KL
//! radius solve (`binned`) and the element types (`real`). Crate-private: the examples that time
//! a pass reach it through the `internals` feature.

pub mod batch;
pub mod binned;
pub mod passes;
pub mod real;
pub mod select;
