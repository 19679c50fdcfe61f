//! `launch`: the image's CMDS, or the applications LAUNCH names, on the
//! first master once the cluster is up, as sealer 0.9+ launches them. Every
//! command runs in the rootfs, except an application's APPCMDS: its words
//! are one command run in the application's directory. Without APPCMDS an
//! application runs by type: `kubectl apply -f` of each launch file for
//! `kube`, `helm install NAME DIR` for `helm`, `bash` of each launch file
//! for `shell` (paths relative to the rootfs).

use std::collections::BTreeMap;
use std::path::PathBuf;

use seaport_shared::cluster::Step;

use super::super::effects::CommandSpec;
use super::context::shell_quote;
use super::context::{HostStep, StepContext};
use super::error::StepError;

pub(super) struct Launch;

impl HostStep for Launch {
    fn step(&self) -> Step {
        Step::Launch
    }

    fn run(&self, cx: &mut StepContext<'_>) -> Result<String, StepError> {
        let Some(ext) = cx.img.extension() else {
            return Ok("nothing to launch".into());
        };
        let rootfs = cx.rootfs();
        let mut commands: Vec<(String, PathBuf, BTreeMap<String, String>)> = Vec::new();
        let env = cx.hook_env();
        for cmd in &ext.launch.cmds {
            commands.push((cmd.clone(), rootfs.clone(), env.clone()));
        }
        for name in &ext.launch.app_names {
            let app = ext
                .applications
                .iter()
                .find(|a| &a.name == name)
                .ok_or_else(|| StepError::UnknownApplication(name.clone()))?;
            let dir = if app.path.is_empty() {
                format!("application/apps/{}", app.name)
            } else {
                app.path.trim_matches('/').to_string()
            };
            let mut app_env = env.clone();
            app_env.extend(app.env.clone());
            if !app.launch_cmds.is_empty() {
                commands.push((app.launch_cmds.join(" "), rootfs.join(&dir), app_env));
                continue;
            }
            let in_app =
                |file: &str| shell_quote(&format!("{dir}/{}", file.trim_start_matches('/')));
            match app.kind.as_str() {
                "kube" => {
                    for file in &app.launch_files {
                        let cmd = format!("kubectl apply -f {}", in_app(file));
                        commands.push((cmd, rootfs.clone(), app_env.clone()));
                    }
                }
                "helm" => {
                    let cmd = format!(
                        "helm install {} {}",
                        shell_quote(&app.name),
                        shell_quote(&dir)
                    );
                    commands.push((cmd, rootfs.clone(), app_env.clone()));
                }
                "shell" => {
                    for file in &app.launch_files {
                        let cmd = format!("bash {}", in_app(file));
                        commands.push((cmd, rootfs.clone(), app_env.clone()));
                    }
                }
                other => {
                    return Err(StepError::NoLaunch {
                        name: app.name.clone(),
                        kind: other.to_string(),
                    })
                }
            }
        }
        if commands.is_empty() {
            return Ok("nothing to launch".into());
        }
        let n = commands.len();
        for (cmd, cwd, env) in commands {
            let mut spec = CommandSpec::new("bash", &["-c", cmd.as_str()], cx.opts.timeouts.hook);
            spec.cwd = Some(cwd);
            spec.env = env;
            cx.run_tracked("launch", &format!("launch: {cmd}"), &spec)?;
        }
        Ok(format!("{n} launch command(s) exited with 0"))
    }
}
