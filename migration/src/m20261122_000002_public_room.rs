//! The built-in public room that `/pub_ws` points at.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::prelude::{ChronoDateTimeUtc, Uuid};

#[derive(DeriveMigrationName)]
pub struct Migration;

/// Fixed so that every deployment's built-in room has the same, documented id.
pub const PUBLIC_ROOM_ID: &str = "00000000-0000-7000-8000-000000000001";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let id = Uuid::parse_str(PUBLIC_ROOM_ID).map_err(|e| DbErr::Custom(e.to_string()))?;
        let insert = Query::insert()
            .into_table(Alias::new("rooms"))
            .columns(
                [
                    "id",
                    "name",
                    "kind",
                    "owner_id",
                    "last_seq",
                    "member_count",
                    "created_at",
                ]
                .map(Alias::new),
            )
            .values_panic([
                Expr::val(id),
                Expr::val("public"),
                Expr::val("public"),
                Expr::val(Option::<Uuid>::None),
                Expr::val(0i64),
                Expr::val(0i32),
                Expr::val(ChronoDateTimeUtc::UNIX_EPOCH),
            ])
            .to_owned();
        manager.exec_stmt(insert).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let delete = Query::delete()
            .from_table(Alias::new("rooms"))
            .and_where(Expr::col(Alias::new("name")).eq("public"))
            .to_owned();
        manager.exec_stmt(delete).await
    }
}
