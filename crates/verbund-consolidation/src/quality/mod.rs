//! The quality benchmark's pure parts: a seeded generator of a labelled data set and the
//! measures of a partition against its truth. `verbund bench match` times and reports them.

mod generator;
mod metrics;
mod noise;
mod rng;
mod vocabulary;

pub use generator::{Family, Generator, GeneratorParams, Labelled};
pub use metrics::{Prf, Quality, quality};
pub use rng::Rng;
