package main

import (
	"context"
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/go-messaging-system/messaging/api"
	"github.com/go-messaging-system/messaging/supervisor"
)

// apiError converts the supervisor's timeouts of a tenant change into the
// API errors that map to 503 and keeps the cause for the log.
func TestAPIErrorMapsChangeTimeouts(t *testing.T) {
	t.Parallel()
	cases := []struct {
		supervisorErr error
		apiErr        error
	}{
		{supervisor.ErrNotApplied, api.ErrChangeNotApplied},
		{supervisor.ErrMaybeApplied, api.ErrChangeMaybeApplied},
	}
	for _, tc := range cases {
		err := apiError(fmt.Errorf("supervisor request: %w: %w", tc.supervisorErr, context.DeadlineExceeded))
		require.ErrorIs(t, err, tc.apiErr)
		require.ErrorIs(t, err, context.DeadlineExceeded)
	}
}
