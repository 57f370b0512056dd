//! Tests of the app lifecycle: a simulated world in virtual time ([`world`]), the model-based
//! test that drives random sequences through it ([`model`]), the flaws of the old app task as
//! regression tests ([`flaws`]), the async driver against fake processes and builds
//! ([`driver`]), and the one-writer rule for routes and upstreams ([`one_writer`]).

mod driver;
mod flaws;
mod model;
mod one_writer;
mod world;
