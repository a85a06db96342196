package testenv

import (
	"context"
	"log/slog"
	"sync"
)

// LogRecord is one record that a LogRecorder captured.
type LogRecord struct {
	Level   slog.Level
	Message string
	// Attrs has the record's attributes and those added with Logger.With,
	// by key. Groups are ignored.
	Attrs map[string]any
}

// LogRecorder is a slog.Handler that keeps every record at or above its
// level, for tests that check what a component logs and how often.
type LogRecorder struct {
	level slog.Level
	attrs []slog.Attr
	state *recorderState // shared with the handlers WithAttrs returns
}

type recorderState struct {
	mu      sync.Mutex
	records []LogRecord
}

var _ slog.Handler = LogRecorder{}

// NewLogRecorder returns a LogRecorder that keeps the records at or above
// level.
func NewLogRecorder(level slog.Level) LogRecorder {
	return LogRecorder{level: level, state: &recorderState{}}
}

// Enabled reports whether l is at or above the recorder's level.
func (h LogRecorder) Enabled(_ context.Context, l slog.Level) bool { return l >= h.level }

// Handle keeps r.
func (h LogRecorder) Handle(_ context.Context, r slog.Record) error {
	rec := LogRecord{Level: r.Level, Message: r.Message, Attrs: make(map[string]any, len(h.attrs)+r.NumAttrs())}
	for _, a := range h.attrs {
		rec.Attrs[a.Key] = a.Value.Any()
	}
	r.Attrs(func(a slog.Attr) bool {
		rec.Attrs[a.Key] = a.Value.Any()
		return true
	})
	h.state.mu.Lock()
	defer h.state.mu.Unlock()
	h.state.records = append(h.state.records, rec)
	return nil
}

// WithAttrs returns a handler that adds attrs to every record it keeps.
func (h LogRecorder) WithAttrs(attrs []slog.Attr) slog.Handler {
	h.attrs = append(h.attrs[:len(h.attrs):len(h.attrs)], attrs...)
	return h
}

// WithGroup returns h: the recorder does not group attributes.
func (h LogRecorder) WithGroup(string) slog.Handler { return h }

// Take removes the kept records with the given message and returns them,
// oldest first.
func (h LogRecorder) Take(message string) []LogRecord {
	h.state.mu.Lock()
	defer h.state.mu.Unlock()
	var taken []LogRecord
	kept := h.state.records[:0]
	for _, r := range h.state.records {
		if r.Message == message {
			taken = append(taken, r)
		} else {
			kept = append(kept, r)
		}
	}
	clear(h.state.records[len(kept):])
	h.state.records = kept
	return taken
}

// Levels returns the level name of each record, such as "WARN".
func Levels(records []LogRecord) []string {
	out := make([]string, len(records))
	for i, r := range records {
		out[i] = r.Level.String()
	}
	return out
}
