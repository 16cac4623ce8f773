//! The machinery under the sets: one validated problem (`batch`), the passes over the losses
//! (`passes`), the weighted selection of CVaR and TV (`select`), the binned warm start of the KL
//! radius solve (`binned`), the jobs of a call that solves many problems (`jobs`), the element
//! types (`real`) and the one CPU dispatch (`cpu`), behind which every intrinsic lives.
//! Crate-private: the examples that time a pass reach it through the `internals` feature.

pub mod batch;
pub mod binned;
pub mod cpu;
pub mod jobs;
pub mod passes;
pub mod real;
pub mod select;
