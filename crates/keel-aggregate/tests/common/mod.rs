//! The example aggregate of the tests: a bank account.

#![allow(dead_code, unreachable_pub, missing_docs)]

use keel_aggregate::{Aggregate, event_set};
use keel_core::Event;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Event, Serialize, Deserialize)]
#[event(type = "account.opened", key = account_id)]
pub struct Opened {
    pub account_id: String,
    pub owner: String,
}

#[derive(Debug, Clone, PartialEq, Event, Serialize, Deserialize)]
#[event(type = "account.deposited", key = account_id)]
pub struct Deposited {
    pub account_id: String,
    pub cents: i64,
}

#[derive(Debug, Clone, PartialEq, Event, Serialize, Deserialize)]
#[event(type = "account.withdrawn", key = account_id)]
pub struct Withdrawn {
    pub account_id: String,
    pub cents: i64,
}

event_set! {
    /// What happens to an account.
    #[derive(Debug, Clone, PartialEq)]
    pub enum AccountEvent {
        Opened(Opened),
        Deposited(Deposited),
        Withdrawn(Withdrawn),
    }
}

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Account {
    pub id: Option<String>,
    pub owner: String,
    pub balance: i64,
    pub movements: u64,
}

#[derive(Debug, Clone)]
pub enum Command {
    Open { id: String, owner: String },
    Deposit { cents: i64 },
    Withdraw { cents: i64 },
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum AccountError {
    #[error("the account is already open")]
    AlreadyOpen,
    #[error("the account is not open")]
    NotOpen,
    #[error("an amount must be positive")]
    NotPositive,
    #[error("the balance is {balance}, {wanted} was asked for")]
    Insufficient { balance: i64, wanted: i64 },
}

impl Aggregate for Account {
    const CATEGORY: &'static str = "account";
    type Event = AccountEvent;
    type Command = Command;
    type Error = AccountError;

    fn apply(&mut self, event: &AccountEvent) {
        match event {
            AccountEvent::Opened(e) => {
                self.id = Some(e.account_id.clone());
                self.owner.clone_from(&e.owner);
            }
            AccountEvent::Deposited(e) => {
                self.balance += e.cents;
                self.movements += 1;
            }
            AccountEvent::Withdrawn(e) => {
                self.balance -= e.cents;
                self.movements += 1;
            }
        }
    }

    fn handle(&self, command: &Command) -> Result<Vec<AccountEvent>, AccountError> {
        let open_id = || self.id.clone().ok_or(AccountError::NotOpen);
        match command {
            Command::Open { id, owner } => {
                if self.id.is_some() {
                    return Err(AccountError::AlreadyOpen);
                }
                Ok(vec![Opened { account_id: id.clone(), owner: owner.clone() }.into()])
            }
            Command::Deposit { cents } => {
                let account_id = open_id()?;
                if *cents <= 0 {
                    return Err(AccountError::NotPositive);
                }
                Ok(vec![Deposited { account_id, cents: *cents }.into()])
            }
            Command::Withdraw { cents } => {
                let account_id = open_id()?;
                if *cents <= 0 {
                    return Err(AccountError::NotPositive);
                }
                if *cents > self.balance {
                    return Err(AccountError::Insufficient {
                        balance: self.balance,
                        wanted: *cents,
                    });
                }
                Ok(vec![Withdrawn { account_id, cents: *cents }.into()])
            }
        }
    }
}

pub fn open(id: &str) -> Command {
    Command::Open { id: id.to_owned(), owner: "ada".to_owned() }
}

pub fn deposit(cents: i64) -> Command {
    Command::Deposit { cents }
}
