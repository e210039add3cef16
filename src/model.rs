//! The vocabulary of operations: statuses, stop reasons, types and the
//! transition rules between statuses. The strings here are the contract of
//! SPEC §2 and match the CHECK constraints in `schema.sql`.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

macro_rules! string_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $variant:ident => $s:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($(#[$vm])* $variant),+ }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            /// The string stored in the database and shown to users.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $s),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($s => Ok($name::$variant),)+
                    _ => Err(format!(
                        "unknown {} {s:?}; known: {}",
                        stringify!($name),
                        [$($s),+].join(", ")
                    )),
                }
            }
        }
    };
}

string_enum!(
    /// Where an operation is in its life.
    Status {
        /// Waiting for a worker.
        Pending => "pending",
        /// Chosen by try_resume, about to run again.
        Resuming => "resuming",
        /// A worker is running it.
        Running => "running",
        /// Finished successfully; final.
        Completed => "completed",
        /// Stopped by an error; resumable.
        Failed => "failed",
        /// Stopped on request; resumable.
        Cancelled => "cancelled",
    }
);

impl Status {
    /// True for the statuses SPEC §2 allows `self -> to`.
    pub fn can_transition_to(self, to: Status) -> bool {
        use Status::*;
        matches!(
            (self, to),
            (Pending, Running)
                | (Pending, Cancelled)
                | (Running, Completed)
                | (Running, Failed)
                | (Running, Cancelled)
                | (Cancelled, Resuming)
                | (Failed, Resuming)
                | (Resuming, Running)
                | (Resuming, Failed)
                | (Resuming, Cancelled)
        )
    }

    /// Pending, resuming or running.
    pub fn is_active(self) -> bool {
        matches!(self, Status::Pending | Status::Resuming | Status::Running)
    }
}

string_enum!(
    /// Why a cancelled or failed operation stopped.
    StopReason {
        /// The user cancelled it.
        User => "user",
        /// Its parent was cancelled or failed.
        Parent => "parent",
        /// The daemon was asked to stop.
        Shutdown => "shutdown",
        /// Found running after an unclean daemon exit.
        Crash => "crash",
        /// The job itself failed.
        Error => "error",
        /// An `--after` dependency failed or was cancelled.
        Dependency => "dependency",
    }
);

string_enum!(
    /// The kinds of job opsd can run.
    OperationType {
        /// Sleeps through steps; for tests and demos.
        Dummy => "dummy",
        /// Runs the user's own program.
        Command => "command",
        /// Trains a small neural network on market bars.
        Training => "training",
        /// Runs a trading strategy over market bars.
        Backtest => "backtest",
        /// Training then backtest, as child operations.
        Pipeline => "pipeline",
    }
);

string_enum!(
    /// Why a checkpoint was written.
    CheckpointType {
        /// On the job's regular schedule.
        Periodic => "periodic",
        /// Because the operation was cancelled.
        Cancellation => "cancellation",
        /// Because the daemon is stopping.
        Shutdown => "shutdown",
        /// Because the job failed.
        Failure => "failure",
    }
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_round_trip() {
        for s in Status::ALL {
            assert_eq!(s.as_str().parse::<Status>().unwrap(), *s);
        }
        for t in OperationType::ALL {
            assert_eq!(t.as_str().parse::<OperationType>().unwrap(), *t);
        }
        let err = "nope".parse::<OperationType>().unwrap_err();
        assert!(err.contains("dummy") && err.contains("pipeline"), "{err}");
    }

    #[test]
    fn completed_is_final() {
        for s in Status::ALL {
            assert!(!Status::Completed.can_transition_to(*s));
        }
        assert!(Status::Failed.can_transition_to(Status::Resuming));
        assert!(!Status::Pending.can_transition_to(Status::Completed));
    }
}
