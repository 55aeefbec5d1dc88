//! edgefleet's API: the custom resources EdgeModule, EdgeDeployment, EdgeDevice and EdgeGrant
//! (`edgefleet.io/v1alpha1`), every identity string as a const, and pure helpers shared by
//! the controller and the agent. No IO lives here.

pub mod bounds;
pub mod condition;
pub mod deployment;
pub mod device;
pub mod device_rollouts;
pub mod duration;
pub mod grant;
pub mod hub;
pub mod identity;
pub mod limits;
pub mod module;
pub mod names;
pub mod renewal;
pub mod rollout;
pub mod route;
pub mod schema;
pub mod status_written;
pub mod writes;

pub use condition::{Condition, ConditionStatus};
pub use deployment::{
    DeploymentModule, DesiredStatus, DeviceSelector, EdgeDeployment, EdgeDeploymentSpec,
    EdgeDeploymentStatus, FailureSample, ModuleOverrides, SelectorOperator, SelectorRequirement,
};
pub use device::{
    DesiredState, EdgeDevice, EdgeDeviceSpec, EdgeDeviceStatus, ModuleStatus, ResolvedModule,
    RuntimeStatus, TargetingDecision, TargetingOutcome, module_key,
};
pub use device_rollouts::Rollouts;
pub use grant::{EdgeGrant, EdgeGrantSpec, PriorityRange};
pub use module::{EdgeModule, EdgeModuleSpec, EdgeModuleStatus};
pub use rollout::{
    CanarySpec, Count, OnFailure, OnUntarget, RevisionCount, RolloutPhase, RolloutSpec,
    RolloutStatus,
};
