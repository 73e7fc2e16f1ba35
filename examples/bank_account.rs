//! The bank account of the tutorial: open, deposit, withdraw (refusing an overdraft), save,
//! load, print the balance. Amounts are whole cents (`i64`): 10_000 is 100.00.
//!
//! ```text
//! cargo run --example bank_account                      # in memory
//! cargo run --example bank_account -- sqlite:bank.db    # in a SQLite file
//! ```

#[path = "domain/account.rs"]
mod account;

use account::Account;
use account::AccountCommands;
use account::Units;
use eventsourcing_kit::prelude::*;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args().nth(1).unwrap_or_else(|| "memory:".into());
    let stores = eventsourcing_kit::backend::open(&url).await?;
    stores.migrate().await?;
    let repo = stores.repository_with_snapshots::<Account>(SnapshotPolicy::every(100)?);

    let id = Uuid::new_v4();
    let mut account = repo.create_new(id);
    account.open("Ada Lovelace", 10_000).expect("a new account opens");
    account.deposit(5_000).expect("a positive deposit");
    account.withdraw(3_000).expect("funds are there");
    repo.save(&mut account).await?;
    println!("Opened account {id} on the {} store", stores.backend_name());

    let mut account = repo.load(id).await?;
    println!(
        "Loaded {} at version {}: balance {} after {} transactions",
        account.state().owner_name,
        account.version(),
        Units(account.state().balance),
        account.state().transaction_count
    );

    match account.withdraw(100_000) {
        Err(refused) => println!("Withdrawing 1000.00 is refused: {refused}"),
        Ok(()) => unreachable!("the balance is 120.00"),
    }
    assert!(!account.has_pending_events(), "a refused command records nothing");
    account.deposit(500).expect("a positive deposit");
    repo.save(&mut account).await?;
    println!("Final balance: {}", Units(repo.load(id).await?.state().balance));
    Ok(())
}
