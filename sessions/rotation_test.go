package sessions_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/agentsessions/agentsessions/internal/testdb"
	"github.com/agentsessions/agentsessions/sessions"
)

var (
	rotOld  = []byte("rotation-old-secret-0123456789abcdef-0123")
	rotNext = []byte("rotation-next-secret-0123456789abcdef-012")
)

// rotationPhase returns the config fields of an instance in phase 0
// (before the rotation) to 3 (done), as Config.VerifySecrets documents.
func rotationPhase(phase int) (secret []byte, verify [][]byte) {
	switch phase {
	case 0:
		return rotOld, nil
	case 1:
		return rotOld, [][]byte{rotNext}
	case 2:
		return rotNext, [][]byte{rotOld}
	case 3:
		return rotNext, nil
	}
	panic(phase)
}

type phasedInstance struct {
	phase int
	name  string
	m     *sessions.Manager
}

// fleet builds two instances per phase on stores from newStore (one store
// each: they share what the stores share), all on clock.
func fleet(t *testing.T, clock *fakeClock, newStore func() sessions.Store, phases ...int) []phasedInstance {
	t.Helper()
	var out []phasedInstance
	for _, ph := range phases {
		for i := range 2 {
			secret, verify := rotationPhase(ph)
			m, err := sessions.New(newStore(), sessions.Config{
				Secret: secret, VerifySecrets: verify, TTL: time.Hour, Limit: 1000, Clock: clock.Now,
			})
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, phasedInstance{ph, fmt.Sprintf("phase-%d instance %d", ph, i), m})
		}
	}
	return out
}

// checkFleet proves a mixed fleet works: a token issued by any instance
// authenticates on every instance, and refreshing it on any instance gives
// a token that authenticates (and refreshes) on every instance in turn.
func checkFleet(t *testing.T, clock *fakeClock, insts []phasedInstance) {
	t.Helper()
	ctx := context.Background()
	for _, issuer := range insts {
		agent := "agent-from-" + issuer.name
		iss, err := issuer.m.Issue(ctx, agent)
		if err != nil {
			t.Fatalf("%s: issue: %v", issuer.name, err)
		}
		authEverywhere := func(tok, what string) {
			t.Helper()
			for _, v := range insts {
				if _, err := v.m.Authenticate(ctx, tok, agent); err != nil {
					t.Fatalf("%s rejects the %s: %v", v.name, what, err)
				}
				if _, err := v.m.Verify(ctx, tok); err != nil {
					t.Fatalf("%s: Verify rejects the %s: %v", v.name, what, err)
				}
			}
		}
		authEverywhere(iss.Token, "token issued by "+issuer.name)
		tok := iss.Token
		for _, r := range insts {
			clock.Advance(time.Second) // so the refresh moves the expiry and re-signs
			ref, err := r.m.Refresh(ctx, tok, agent)
			if err != nil {
				t.Fatalf("%s cannot refresh a token issued by %s: %v", r.name, issuer.name, err)
			}
			if ref.Token == tok {
				t.Fatalf("%s: refresh returned the same token", r.name)
			}
			tok = ref.Token
			authEverywhere(tok, fmt.Sprintf("token issued by %s, refreshed by %s", issuer.name, r.name))
		}
	}
}

func testRollingRotation(t *testing.T, newStore func() sessions.Store) {
	clock := newClock(1_800_000_000)
	for _, mix := range [][]int{{0}, {0, 1}, {1}, {1, 2}, {2}, {2, 3}, {3}} {
		t.Run(fmt.Sprint("phases", mix), func(t *testing.T) {
			checkFleet(t, clock, fleet(t, clock, newStore, mix...))
		})
	}

	// The one-step rotation (new Secret with the old one verify-only,
	// phase 2 straight after phase 0) is what breaks a rolling deploy:
	// instances not yet updated reject the updated ones' tokens.
	t.Run("one-step rotation breaks", func(t *testing.T) {
		insts := fleet(t, clock, newStore, 0, 2)
		iss, err := insts[2].m.Issue(context.Background(), "agent-one-step")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := insts[0].m.Authenticate(context.Background(), iss.Token, "agent-one-step"); !errors.Is(err, sessions.ErrInvalidSignature) {
			t.Fatalf("a phase-0 instance accepted a token signed with the next secret: %v", err)
		}
	})
}

func TestRollingRotationMemory(t *testing.T) {
	shared := sessions.NewMemoryStore()
	testRollingRotation(t, func() sessions.Store { return shared })
}

func TestRollingRotationPostgres(t *testing.T) {
	d := testdb.New(t)
	testRollingRotation(t, func() sessions.Store {
		s, err := sessions.NewPostgresStore(d.Pool(t), nil)
		if err != nil {
			t.Fatal(err)
		}
		return s
	})
}

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
