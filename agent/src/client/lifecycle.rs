//! Task lifecycle hooks (Nomad's `client/allocrunner/tasklifecycle`): the
//! order in which an allocation's tasks start and end, as a pure decision.
//!
//! [`decide`] takes a view of every task of the allocation and whether the
//! allocation was stopped, and returns what to do now: tasks to start,
//! running tasks to kill, waiting tasks to give up on. It keeps no state of
//! its own: everything it needs is in the task states, so the alloc runner
//! calls it after every change (and after a restart of the agent) and applies
//! what it returns until it returns nothing.
//!
//! The rules, Nomad's:
//! - prestart tasks start first; main tasks start once every non-sidecar
//!   prestart task completed successfully and every prestart sidecar runs;
//! - poststart tasks start once every main task has started (none pending);
//! - when every main task is dead, sidecars (and any hook not yet started)
//!   end, once no other non-poststop task still runs;
//! - a failed task, a dead leader or a stopped allocation ends every
//!   non-poststop task;
//! - poststop tasks start once every other task is dead, however it ended.

use caravan_engine::model::{LifecycleHook, TaskLifecycle, TaskLifecycleState};

/// Where a task stands in the lifecycle, from its `lifecycle` block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Stage {
    /// `prestart`, runs to completion before the main tasks.
    PrestartEphemeral,
    /// `prestart` sidecar: runs before and beside the main tasks.
    PrestartSidecar,
    /// No lifecycle block.
    Main,
    /// `poststart`, once the main tasks run.
    PoststartEphemeral,
    /// `poststart` sidecar: from once the main tasks run, beside them.
    PoststartSidecar,
    /// `poststop`, once every other task is dead.
    Poststop,
}

impl Stage {
    pub fn of(lifecycle: Option<TaskLifecycle>) -> Stage {
        match lifecycle {
            None => Stage::Main,
            Some(TaskLifecycle { hook: LifecycleHook::Prestart, sidecar: false }) => Stage::PrestartEphemeral,
            Some(TaskLifecycle { hook: LifecycleHook::Prestart, sidecar: true }) => Stage::PrestartSidecar,
            Some(TaskLifecycle { hook: LifecycleHook::Poststart, sidecar: false }) => Stage::PoststartEphemeral,
            Some(TaskLifecycle { hook: LifecycleHook::Poststart, sidecar: true }) => Stage::PoststartSidecar,
            // A poststop sidecar has nothing to run beside.
            Some(TaskLifecycle { hook: LifecycleHook::Poststop, .. }) => Stage::Poststop,
        }
    }

    pub fn is_sidecar(self) -> bool {
        matches!(self, Stage::PrestartSidecar | Stage::PoststartSidecar)
    }
}

/// What [`decide`] reads of one task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskView {
    pub stage: Stage,
    pub leader: bool,
    pub state: TaskLifecycleState,
    pub failed: bool,
    /// A task runner was started for it: it runs, waits to restart, or ran.
    pub launched: bool,
    /// Its kill was already requested.
    pub killing: bool,
}

impl TaskView {
    fn dead(&self) -> bool {
        self.state == TaskLifecycleState::Dead
    }

    /// Launched and not dead yet.
    fn live(&self) -> bool {
        self.launched && !self.dead()
    }
}

/// Why tasks end before their time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// The task at this index failed for good.
    SiblingFailed(usize),
    /// The leader task is dead.
    LeaderDead,
    /// The allocation was stopped (by the servers, or it left this node).
    Stopped,
    /// Every main task is dead: sidecars and hooks not started have no
    /// reason to run.
    MainDead,
}

/// One thing to do, naming tasks by their index in the views.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Start(usize),
    /// Kill a launched task.
    Kill(usize, EndReason),
    /// A task never launched that never will: it is dead, not failed.
    Skip(usize, EndReason),
}

/// Why the non-poststop tasks must end, if they must. A failure names the
/// task first, as its siblings' events say who failed.
fn end_reason(tasks: &[TaskView], stopped: bool) -> Option<EndReason> {
    let hooked = || tasks.iter().enumerate().filter(|(_, t)| t.stage != Stage::Poststop);
    if let Some((index, _)) = hooked().find(|(_, t)| t.dead() && t.failed) {
        return Some(EndReason::SiblingFailed(index));
    }
    if hooked().any(|(_, t)| t.leader && t.dead()) {
        return Some(EndReason::LeaderDead);
    }
    if stopped {
        return Some(EndReason::Stopped);
    }
    let mut mains = tasks.iter().filter(|t| t.stage == Stage::Main).peekable();
    if mains.peek().is_some() && mains.all(TaskView::dead) {
        return Some(EndReason::MainDead);
    }
    None
}

/// What to do now, given every task's view and whether the allocation was
/// stopped; see the module documentation. Returns nothing once the tasks
/// are where they should be; applying the actions and calling it again
/// eventually returns nothing (every action launches, kills or buries a
/// task that was not yet, and none is undone).
pub fn decide(tasks: &[TaskView], stopped: bool) -> Vec<Action> {
    let mut actions = Vec::new();
    match end_reason(tasks, stopped) {
        Some(EndReason::MainDead) => {
            // Sidecars end once nothing but sidecars runs (a poststart task
            // still running keeps them); hooks not started never will.
            let others_live = tasks.iter().any(|t| t.stage != Stage::Poststop && !t.stage.is_sidecar() && t.live());
            for (index, task) in tasks.iter().enumerate() {
                if task.stage == Stage::Poststop || task.dead() {
                    continue;
                }
                if !task.launched {
                    actions.push(Action::Skip(index, EndReason::MainDead));
                } else if task.stage.is_sidecar() && !others_live && !task.killing {
                    actions.push(Action::Kill(index, EndReason::MainDead));
                }
            }
        }
        Some(reason) => {
            for (index, task) in tasks.iter().enumerate() {
                if task.stage == Stage::Poststop || task.dead() {
                    continue;
                }
                if !task.launched {
                    actions.push(Action::Skip(index, reason));
                } else if !task.killing {
                    actions.push(Action::Kill(index, reason));
                }
            }
        }
        None => {
            let of = |stage: Stage| tasks.iter().filter(move |t| t.stage == stage);
            let prestart_done = of(Stage::PrestartEphemeral).all(|t| t.dead() && !t.failed)
                && of(Stage::PrestartSidecar)
                    .all(|t| t.state == TaskLifecycleState::Running || (t.dead() && !t.failed));
            let main_started = of(Stage::Main).all(|t| t.launched && t.state != TaskLifecycleState::Pending);
            for (index, task) in tasks.iter().enumerate() {
                if task.launched || task.dead() {
                    continue;
                }
                let start = match task.stage {
                    Stage::PrestartEphemeral | Stage::PrestartSidecar => true,
                    Stage::Main => prestart_done,
                    Stage::PoststartEphemeral | Stage::PoststartSidecar => main_started,
                    Stage::Poststop => false,
                };
                if start {
                    actions.push(Action::Start(index));
                }
            }
        }
    }
    // Poststop tasks start once every other task is dead, however it ended.
    if actions.is_empty() && tasks.iter().all(|t| t.stage == Stage::Poststop || t.dead()) {
        for (index, task) in tasks.iter().enumerate() {
            if task.stage == Stage::Poststop && !task.launched && !task.dead() {
                actions.push(Action::Start(index));
            }
        }
    }
    actions
}

#[cfg(test)]
mod tests {
    use std::fmt::Write;

    use expect_test::{Expect, expect};

    use super::*;
    use TaskLifecycleState::{Dead, Pending, Running};

    /// A task as text: `<stage>` then its state: `wait` (never launched),
    /// `pend`, `run`, `ok` (dead), `fail` (dead, failed); `!` marks a kill
    /// requested, `*` the leader. Stages: `pre`, `pre-side`, `main`,
    /// `post`, `post-side`, `stop`.
    fn view(text: &str) -> TaskView {
        let (stage, state) = text.split_once(':').unwrap();
        let leader = state.ends_with('*');
        let state = state.trim_end_matches('*');
        let killing = state.ends_with('!');
        let state = state.trim_end_matches('!');
        let stage = match stage {
            "pre" => Stage::PrestartEphemeral,
            "pre-side" => Stage::PrestartSidecar,
            "main" => Stage::Main,
            "post" => Stage::PoststartEphemeral,
            "post-side" => Stage::PoststartSidecar,
            "stop" => Stage::Poststop,
            other => panic!("unknown stage {other}"),
        };
        let (state, failed, launched) = match state {
            "wait" => (Pending, false, false),
            "pend" => (Pending, false, true),
            "run" => (Running, false, true),
            "ok" => (Dead, false, true),
            "fail" => (Dead, true, true),
            other => panic!("unknown state {other}"),
        };
        TaskView { stage, leader, state, failed, launched, killing }
    }

    /// One line per case: the tasks, then what [`decide`] does.
    fn check(cases: &[(&str, bool)], expect: Expect) {
        let mut out = String::new();
        for (tasks, stopped) in cases {
            let views: Vec<TaskView> = tasks.split_whitespace().map(view).collect();
            let actions: Vec<String> = decide(&views, *stopped)
                .into_iter()
                .map(|action| match action {
                    Action::Start(i) => format!("start {i}"),
                    Action::Kill(i, reason) => format!("kill {i} ({reason:?})"),
                    Action::Skip(i, reason) => format!("skip {i} ({reason:?})"),
                })
                .collect();
            let stop = if *stopped { " [stopped]" } else { "" };
            writeln!(out, "{tasks}{stop} => {}", if actions.is_empty() { "-".into() } else { actions.join(", ") })
                .unwrap();
        }
        expect.assert_eq(&out);
    }

    #[test]
    fn tasks_start_in_lifecycle_order() {
        check(
            &[
                ("main:wait main:wait", false),
                ("pre:wait pre-side:wait main:wait post:wait stop:wait", false),
                ("pre:run pre-side:run main:wait post:wait stop:wait", false),
                ("pre:ok pre-side:pend main:wait", false),
                ("pre:ok pre-side:run main:wait post:wait post-side:wait stop:wait", false),
                ("pre:ok pre-side:run main:pend post:wait post-side:wait", false),
                ("pre:ok pre-side:run main:run main:pend post:wait", false),
                ("pre:ok pre-side:run main:run main:run post:wait post-side:wait stop:wait", false),
                ("pre:ok main:run post:ok post-side:run stop:wait", false),
                // A prestart task restarting under its policy holds the main tasks.
                ("pre:pend main:wait", false),
            ],
            expect![[r#"
                main:wait main:wait => start 0, start 1
                pre:wait pre-side:wait main:wait post:wait stop:wait => start 0, start 1
                pre:run pre-side:run main:wait post:wait stop:wait => -
                pre:ok pre-side:pend main:wait => -
                pre:ok pre-side:run main:wait post:wait post-side:wait stop:wait => start 2
                pre:ok pre-side:run main:pend post:wait post-side:wait => -
                pre:ok pre-side:run main:run main:pend post:wait => -
                pre:ok pre-side:run main:run main:run post:wait post-side:wait stop:wait => start 4, start 5
                pre:ok main:run post:ok post-side:run stop:wait => -
                pre:pend main:wait => -
            "#]],
        );
    }

    #[test]
    fn main_tasks_done_end_the_sidecars_then_poststop_runs() {
        check(
            &[
                ("pre-side:run main:ok post-side:run stop:wait", false),
                ("pre-side:run main:ok main:run stop:wait", false),
                // A poststart task still running keeps the sidecars.
                ("pre-side:run main:ok post:run stop:wait", false),
                ("pre-side:run main:ok post:ok stop:wait", false),
                ("pre-side:run! main:ok post-side:run! stop:wait", false),
                // Main tasks that ended before the poststart tasks started.
                ("main:ok post:wait post-side:wait stop:wait", false),
                ("pre-side:ok main:ok post-side:ok stop:wait", false),
                ("main:ok stop:wait stop:wait", false),
                ("main:ok stop:run stop:wait", false),
                ("main:ok stop:ok", false),
            ],
            expect![[r#"
                pre-side:run main:ok post-side:run stop:wait => kill 0 (MainDead), kill 2 (MainDead)
                pre-side:run main:ok main:run stop:wait => -
                pre-side:run main:ok post:run stop:wait => -
                pre-side:run main:ok post:ok stop:wait => kill 0 (MainDead)
                pre-side:run! main:ok post-side:run! stop:wait => -
                main:ok post:wait post-side:wait stop:wait => skip 1 (MainDead), skip 2 (MainDead)
                pre-side:ok main:ok post-side:ok stop:wait => start 3
                main:ok stop:wait stop:wait => start 1, start 2
                main:ok stop:run stop:wait => start 2
                main:ok stop:ok => -
            "#]],
        );
    }

    #[test]
    fn failure_leader_and_stop_end_every_task_but_poststop() {
        check(
            &[
                // A failed prestart task: main tasks never start.
                ("pre:fail pre-side:run main:wait post:wait stop:wait", false),
                ("pre:fail pre-side:ok main:ok post:ok stop:wait", false),
                ("pre-side:run main:fail main:run stop:wait", false),
                ("pre-side:run main:ok* main:run stop:wait", false),
                ("pre:run main:wait stop:wait", true),
                ("pre-side:run main:run post-side:run stop:wait", true),
                ("pre-side:run! main:run! stop:wait", true),
                ("pre-side:ok main:ok stop:wait", true),
                // A poststop task is never killed, and its failure ends nothing.
                ("main:ok stop:run", true),
                ("main:ok stop:fail stop:wait", false),
            ],
            expect![[r#"
                pre:fail pre-side:run main:wait post:wait stop:wait => kill 1 (SiblingFailed(0)), skip 2 (SiblingFailed(0)), skip 3 (SiblingFailed(0))
                pre:fail pre-side:ok main:ok post:ok stop:wait => start 4
                pre-side:run main:fail main:run stop:wait => kill 0 (SiblingFailed(1)), kill 2 (SiblingFailed(1))
                pre-side:run main:ok* main:run stop:wait => kill 0 (LeaderDead), kill 2 (LeaderDead)
                pre:run main:wait stop:wait [stopped] => kill 0 (Stopped), skip 1 (Stopped)
                pre-side:run main:run post-side:run stop:wait [stopped] => kill 0 (Stopped), kill 1 (Stopped), kill 2 (Stopped)
                pre-side:run! main:run! stop:wait [stopped] => -
                pre-side:ok main:ok stop:wait [stopped] => start 2
                main:ok stop:run [stopped] => -
                main:ok stop:fail stop:wait => start 2
            "#]],
        );
    }

    /// Applying the actions and deciding again always settles: every task
    /// ends dead, whatever the lifecycle mix, the exits and the stop.
    #[test]
    fn decisions_settle() {
        let stages = [
            Stage::PrestartEphemeral,
            Stage::PrestartSidecar,
            Stage::Main,
            Stage::PoststartEphemeral,
            Stage::PoststartSidecar,
            Stage::Poststop,
        ];
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for case in 0..500 {
            let count = 1 + (next() % 6) as usize;
            let mut tasks: Vec<TaskView> = (0..count)
                .map(|i| TaskView {
                    stage: if i == 0 { Stage::Main } else { stages[(next() % 6) as usize] },
                    leader: false,
                    state: Pending,
                    failed: false,
                    launched: false,
                    killing: false,
                })
                .collect();
            let stop_at = next() % 12;
            // Bounded: each step launches, runs, kills or ends one task.
            for step in 0..200 {
                let stopped = step >= stop_at;
                let actions = decide(&tasks, stopped);
                for action in &actions {
                    match *action {
                        Action::Start(i) => {
                            assert!(!tasks[i].launched, "case {case}: started twice");
                            tasks[i].launched = true;
                        }
                        Action::Kill(i, _) => {
                            assert!(tasks[i].launched && !tasks[i].killing, "case {case}: bad kill");
                            tasks[i].killing = true;
                        }
                        Action::Skip(i, _) => {
                            assert!(!tasks[i].launched, "case {case}: skipped a launched task");
                            tasks[i].state = Dead;
                        }
                    }
                }
                // One task moves on: pending → running → dead (sometimes failed).
                let live: Vec<usize> = (0..tasks.len()).filter(|&i| tasks[i].live()).collect();
                if actions.is_empty() && live.is_empty() {
                    break;
                }
                if let Some(&i) = live.get((next() % live.len().max(1) as u64) as usize) {
                    let task = &mut tasks[i];
                    if task.killing || task.state == Running {
                        task.state = Dead;
                        task.failed = !task.killing && next() % 5 == 0;
                    } else {
                        task.state = Running;
                    }
                }
            }
            assert!(tasks.iter().all(|t| t.dead()), "case {case}: {tasks:?}");
        }
    }
}
