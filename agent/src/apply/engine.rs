//! The engine: a host's steps in order, each journaled with a fingerprint
//! of its inputs, skipped when done with the same inputs, repeated when
//! interrupted.

use std::time::Instant;

use seaport_shared::cluster::{steps_for, Role, Step};

use super::effects::Effects;
use super::journal::{self, Journal, StepStatus};
use super::options::ApplyOptions;
use super::outcome::{ApplyError, ApplyReport, StepEvent};
use super::steps::{host_step, written_join_data, StepContext};

/// Applies the image on this host. `progress` sees every step event.
pub fn apply(
    opts: &ApplyOptions,
    fx: &dyn Effects,
    progress: &mut dyn FnMut(&StepEvent),
) -> Result<ApplyReport, ApplyError> {
    let img = opts.image.open()?;
    let mut journal = Journal::open(&opts.state_dir, opts.cluster.as_str())?;
    let installed = journal.state().image.clone();
    if !installed.is_empty() && installed != img.digest.to_string() && !opts.upgrade {
        return Err(ApplyError::OtherImage {
            cluster: opts.cluster.clone(),
            installed,
            image: img.digest.to_string(),
        });
    }
    let digest = img.digest.to_string();
    let role = opts.role.to_string();
    journal.update(|s| {
        s.image = digest;
        s.roles = vec![role];
    })?;
    let runs_kubeadm = opts
        .only
        .as_ref()
        .is_none_or(|only| only.contains(&Step::Kubeadm));
    if opts.role != Role::Master0 && opts.join_data.is_none() && runs_kubeadm {
        return Err(ApplyError::NoJoinData(opts.role));
    }
    if opts.role != Role::Master0 && opts.join_data.is_none() && opts.master0_ip.is_none() {
        return Err(ApplyError::NoMaster0(opts.role));
    }
    let mut cx = StepContext::new(opts, fx, img, journal)?;
    let registry_host = cx.registry_ip == cx.host_ip;
    // The engine admits the launch step on every first master: it is a
    // no-op when the image launches nothing.
    let steps = steps_for(opts.role, registry_host, true);
    if let Some(only) = &opts.only {
        if let Some(unknown) = only.iter().find(|s| !steps.contains(s)) {
            return Err(ApplyError::NotAStep {
                step: *unknown,
                role: opts.role,
                steps,
            });
        }
    }
    let mut report = ApplyReport::default();
    for imp in steps.iter().map(|&s| host_step(s)) {
        let step = imp.step();
        let fingerprint = cx.fingerprint(step);
        let prev = cx.journal.state().steps.get(step.as_str()).cloned();
        let done_before = prev.as_ref().is_some_and(|p| {
            p.status == StepStatus::Done
                && (p.fingerprint == fingerprint || !imp.reruns_on_change())
        });
        if let Some(only) = &opts.only {
            if !only.contains(&step) {
                // A step of an earlier phase must be done before this one runs.
                let later = only
                    .iter()
                    .filter_map(|s| steps.iter().position(|x| x == s))
                    .min()
                    .is_some_and(|first| steps.iter().position(|x| *x == step) < Some(first));
                if later && !done_before {
                    return Err(ApplyError::NotYetRun {
                        step,
                        asked: only.clone(),
                    });
                }
                continue;
            }
        }
        if done_before {
            progress(&StepEvent::Skipped {
                step: step.to_string(),
            });
            report.skipped.push(step);
            continue;
        }
        let attempt = prev.as_ref().map_or(0, |p| p.attempts) + 1;
        cx.journal.update(|s| {
            s.steps.insert(
                step.to_string(),
                journal::StepRecord {
                    status: StepStatus::Running,
                    fingerprint: fingerprint.clone(),
                    attempts: attempt,
                    message: String::new(),
                },
            );
        })?;
        progress(&StepEvent::Started {
            step: step.to_string(),
            attempt,
        });
        let started = Instant::now();
        cx.interrupted = prev
            .as_ref()
            .is_some_and(|p| p.status == StepStatus::Running);
        cx.rerun = prev.is_some();
        let result = imp.run(&mut cx);
        let (status, message) = match &result {
            Ok(summary) => (StepStatus::Done, summary.clone()),
            Err(e) => (StepStatus::Failed, e.to_string()),
        };
        cx.journal.update(|s| {
            if let Some(r) = s.steps.get_mut(step.as_str()) {
                r.status = status;
                r.message = message.clone();
            }
        })?;
        match result {
            Ok(summary) => {
                progress(&StepEvent::Done {
                    step: step.to_string(),
                    summary,
                    elapsed: started.elapsed(),
                });
                report.ran.push(step);
            }
            Err(error) => {
                progress(&StepEvent::Failed {
                    step: step.to_string(),
                    error: message,
                });
                return Err(ApplyError::Step {
                    step: step.to_string(),
                    error: Box::new(error),
                });
            }
        }
    }
    report.join_data = written_join_data(opts);
    Ok(report)
}
