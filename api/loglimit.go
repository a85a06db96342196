package api

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// logInterval is how often logLimiter lets one kind of message through.
const logInterval = time.Second

// logLimiter logs each kind of message at most once per logInterval, so an
// outage that fails every request does not flood the log. The next message
// that gets through carries the number of suppressed ones.
type logLimiter struct {
	mu    sync.Mutex
	kinds map[string]*logKind
}

type logKind struct {
	last       time.Time
	suppressed int
}

func newLogLimiter() *logLimiter {
	return &logLimiter{kinds: map[string]*logKind{}}
}

// log writes msg with args unless a message of the same level, text and op
// was written less than logInterval ago.
func (l *logLimiter) log(ctx context.Context, logger *slog.Logger, level slog.Level, msg, op string, args ...any) {
	key := level.String() + "|" + msg + "|" + op
	now := time.Now()

	l.mu.Lock()
	k, ok := l.kinds[key]
	if !ok {
		k = &logKind{}
		l.kinds[key] = k
	}
	if now.Sub(k.last) < logInterval {
		k.suppressed++
		l.mu.Unlock()
		return
	}
	suppressed := k.suppressed
	k.last, k.suppressed = now, 0
	l.mu.Unlock()

	args = append([]any{"op", op}, args...)
	if suppressed > 0 {
		args = append(args, "suppressed", suppressed)
	}
	logger.Log(ctx, level, msg, args...)
}
