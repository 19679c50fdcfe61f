//! The Seaport lab.
