//! Transcripts of the echo channel.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum EchoTranscripts {
    Table,
    Id,
    UserId,
    StartedAt,
    EndedAt,
    Frames,
}

#[derive(DeriveIden)]
enum Users {
    Table,
    Id,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(EchoTranscripts::Table)
                    .col(
                        ColumnDef::new(EchoTranscripts::Id)
                            .uuid()
                            .not_null()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(EchoTranscripts::UserId).uuid().not_null())
                    .col(
                        ColumnDef::new(EchoTranscripts::StartedAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(EchoTranscripts::EndedAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .col(ColumnDef::new(EchoTranscripts::Frames).text().not_null())
                    .foreign_key(
                        ForeignKey::create()
                            .from(EchoTranscripts::Table, EchoTranscripts::UserId)
                            .to(Users::Table, Users::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_echo_transcripts_user")
                    .table(EchoTranscripts::Table)
                    .col(EchoTranscripts::UserId)
                    .col(EchoTranscripts::StartedAt)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(EchoTranscripts::Table).to_owned())
            .await
    }
}
