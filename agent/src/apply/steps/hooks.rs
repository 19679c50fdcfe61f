//! `hook-init` and `hook-init-kube`: the image's `scripts/init.sh` and
//! `scripts/init-kube.sh`, run with the hooks' env under tracking (what they
//! write under `/etc`, `/usr` and `/opt` is journaled).

use seaport_shared::cluster::Step;

use super::super::effects::CommandSpec;
use super::context::{HostStep, StepContext};
use super::error::StepError;

/// A hook step: the script it runs.
pub(super) struct Hook {
    step: Step,
    script: &'static str,
}

pub(super) static HOOK_INIT: Hook = Hook {
    step: Step::HookInit,
    script: "init.sh",
};

pub(super) static HOOK_INIT_KUBE: Hook = Hook {
    step: Step::HookInitKube,
    script: "init-kube.sh",
};

impl HostStep for Hook {
    fn step(&self) -> Step {
        self.step
    }

    fn run(&self, cx: &mut StepContext<'_>) -> Result<String, StepError> {
        let script = self.script;
        let dir = cx.rootfs().join("scripts");
        if !dir.join(script).is_file() {
            return Ok(format!("no scripts/{script} in the image"));
        }
        let mut spec = CommandSpec::new("bash", &[script], cx.opts.timeouts.hook);
        spec.cwd = Some(dir);
        spec.env = cx.hook_env();
        cx.run_tracked(self.step.as_str(), &format!("scripts/{script}"), &spec)?;
        Ok(format!("scripts/{script} exited with 0"))
    }
}
