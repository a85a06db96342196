package transport

import (
	"context"
	"errors"
	"fmt"

	amqp "github.com/rabbitmq/amqp091-go"
)

// classify wraps err with ErrUnavailable unless it is a channel exception
// (AMQP 0-9-1 codes 311 to 406). Those are the broker's reply to the
// request itself, so trying again would not help. Every other code, a
// closed connection or a network error means the broker is unavailable.
func classify(err error) error {
	var ae *amqp.Error
	if errors.As(err, &ae) && ae != amqp.ErrClosed {
		switch ae.Code {
		case amqp.ContentTooLarge, amqp.NoRoute, amqp.NoConsumers, amqp.AccessRefused,
			amqp.NotFound, amqp.ResourceLocked, amqp.PreconditionFailed:
			return err
		}
	}
	return fmt.Errorf("%w: %w", ErrUnavailable, err)
}

// classifyDeclare is classify for declarations, where PRECONDITION_FAILED
// means that the entity exists with other properties or arguments.
func classifyDeclare(err error) error {
	if hasCode(err, amqp.PreconditionFailed) {
		return fmt.Errorf("%w: %w", ErrTopologyConflict, err)
	}
	return classify(err)
}

// hasCode reports whether err is an AMQP error with the reply code.
func hasCode(err error, code int) bool {
	var ae *amqp.Error
	return errors.As(err, &ae) && ae.Code == code
}

// timedOut returns an error wrapping ErrUnavailable and the cause of ctx.
func timedOut(ctx context.Context, op string) error {
	return fmt.Errorf("%w: %s: %w", ErrUnavailable, op, context.Cause(ctx))
}

// closeChannel closes ch, ignoring the error of a channel that the broker or
// a lost connection already closed.
func closeChannel(ch *amqp.Channel) {
	_ = ch.Close()
}
