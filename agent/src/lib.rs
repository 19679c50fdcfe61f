//! The Seaport host agent.
