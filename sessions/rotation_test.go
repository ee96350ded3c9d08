package sessions_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/agentsessions/agentsessions/sessions"
)

// The rolling deploy itself is sessionstest.RollingRotation, run on the
// memory store by TestMemoryStoreContract and on PostgreSQL (a pool per
// instance) by pgxstore's tests.

var (
	rotOld  = []byte("rotation-old-secret-0123456789abcdef-0123")
	rotNext = []byte("rotation-next-secret-0123456789abcdef-012")
)

// PreviousSecrets, the deprecated name, still verifies exactly like
// VerifySecrets, and both lists count when both are set; neither signs.
func TestPreviousSecretsIsVerifySecretsAlias(t *testing.T) {
	ctx := context.Background()
	store := sessions.NewMemoryStore()
	clock := newClock(1_800_000_000)
	third := []byte("rotation-third-secret-0123456789abcdef-01")
	newMgr := func(secret []byte, verify, previous [][]byte) *sessions.Manager {
		m, err := sessions.New(store, sessions.Config{Secret: secret, VerifySecrets: verify, PreviousSecrets: previous,
			TTL: time.Hour, Limit: 100, Clock: clock.Now})
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	both := newMgr(rotNext, [][]byte{rotOld}, [][]byte{third})
	for _, signer := range [][]byte{rotOld, third, rotNext} {
		iss, err := newMgr(signer, nil, nil).Issue(ctx, "agent")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := both.Authenticate(ctx, iss.Token, "agent"); err != nil {
			t.Fatalf("token signed with %q rejected: %v", signer, err)
		}
		clock.Advance(time.Second)
		ref, err := both.Refresh(ctx, iss.Token, "agent")
		if err != nil {
			t.Fatal(err)
		}
		// Refresh signed with Secret only: a manager knowing just Secret accepts it.
		if _, err := newMgr(rotNext, nil, nil).Authenticate(ctx, ref.Token, "agent"); err != nil {
			t.Fatalf("refresh did not sign with Secret: %v", err)
		}
	}
	if _, err := sessions.New(store, sessions.Config{Secret: rotNext, VerifySecrets: [][]byte{nil}, TTL: time.Hour, Limit: 1}); !errors.Is(err, sessions.ErrInvalidConfig) {
		t.Fatalf("empty VerifySecrets entry: %v", err)
	}
}
