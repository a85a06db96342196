// Package migrations embeds the numbered goose SQL migrations of the
// messaging schema. persistence.Postgres.Migrate applies them.
package migrations

import "embed"

// FS contains every migration file, named NNNNN_description.sql.
//
//go:embed *.sql
var FS embed.FS
