//! `render`: `*.tmpl` and `statics/` of the rootfs rendered with the
//! cluster env.

use seaport_shared::cluster::Step;

use super::context::{HostStep, StepContext};
use super::error::StepError;

pub(super) struct Render;

impl HostStep for Render {
    fn step(&self) -> Step {
        Step::Render
    }

    fn run(&self, cx: &mut StepContext<'_>) -> Result<String, StepError> {
        let r = seaport_rootfs::render::render_rootfs(&cx.rootfs(), &cx.env)?;
        Ok(format!("{} files rendered", r.rendered.len()))
    }
}
