//! Roles a participant can hold in a conference.

use serde::{Deserialize, Serialize};

/// A participant's role. Carried in the join token and shown in the roster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The ward nurse who runs the conference (host).
    Host,
    /// Other hospital staff (doctor, MSW, nurse).
    Staff,
    /// The patient's care manager (ケアマネジャー).
    CareManager,
    /// The care-needs surveyor (認定調査員).
    Surveyor,
    /// Family member or the patient.
    Family,
}

impl Role {
    /// Every role, in display order.
    pub const ALL: [Role; 5] = [
        Role::Host,
        Role::Staff,
        Role::CareManager,
        Role::Surveyor,
        Role::Family,
    ];

    /// The snake_case wire name, as used in tokens and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Host => "host",
            Role::Staff => "staff",
            Role::CareManager => "care_manager",
            Role::Surveyor => "surveyor",
            Role::Family => "family",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown role {s:?}"))
    }
}
