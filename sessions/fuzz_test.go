package sessions

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

const fuzzSecret = "session-secret"

func seedTokens(f *testing.F) []string {
	v := loadVectors(f)
	var tokens []string
	for _, x := range v.Valid {
		tokens = append(tokens, x.Token)
	}
	for _, x := range v.Invalid {
		tokens = append(tokens, x.Token)
	}
	return tokens
}

// Token parsing never panics and rejects only with the two format classes.
func FuzzParseToken(f *testing.F) {
	for _, tok := range seedTokens(f) {
		f.Add(tok)
	}
	f.Fuzz(func(t *testing.T, token string) {
		p, err := parseToken([]byte(fuzzSecret), token)
		switch {
		case err == nil:
			if len(token) > MaxTokenLength {
				t.Fatalf("accepted a %d-byte token", len(token))
			}
			body, sig, _ := strings.Cut(token, ".")
			if sig != sign([]byte(fuzzSecret), body) {
				t.Fatalf("accepted %q without its signature", token)
			}
			if q, ok := parsePayload(mustDecode(t, body)); !ok || q != p {
				t.Fatalf("accepted %q as %+v, but its payload parses to %+v, %v", token, p, q, ok)
			}
		case errors.Is(err, ErrInvalidTokenFormat), errors.Is(err, ErrInvalidSignature):
		default:
			t.Fatalf("undocumented error %v", err)
		}
	})
}

// The payload parser (reached only with a valid signature, so fuzzed
// directly) never panics, and whatever it accepts re-encodes to a payload
// it parses back to the same value.
func FuzzParsePayload(f *testing.F) {
	for _, tok := range seedTokens(f) {
		body, _, _ := strings.Cut(tok, ".")
		if raw, ok := decodeB64(body); ok {
			f.Add(raw)
		}
	}
	f.Add([]byte(`{"sid":"a","aid":"b","exp":1,"x":[{"y":null}]}`))
	f.Add([]byte(`{"exp":18446744073709551615,"aid":"\u00e9\"","sid":"\\"}`))
	// Lone surrogates: refused in keys, sid and aid; accepted (skipped)
	// in ignored values, as serde_json does.
	f.Add([]byte(`{"sid":"a","aid":"b","exp":1,"x":"\ud800"}`))
	f.Add([]byte(`{"sid":"a","aid":"b","exp":1,"x":{"\udc00":["\ud800\u0041"]}}`))
	f.Add([]byte(`{"sid":"\ud800","aid":"b","exp":1}`))
	f.Add([]byte(`{"sid":"a","aid":"b","exp":1,"\ud800":0}`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		p, ok := parsePayload(raw)
		if !ok {
			return
		}
		again, ok := parsePayload(p.appendJSON(nil))
		if !ok || again != p {
			t.Fatalf("%q parsed to %+v, which re-encodes to %q and parses to %+v (%v)", raw, p, p.appendJSON(nil), again, ok)
		}
	})
}

// Where the canonical fast path accepts a payload, the general parser
// accepts it too, with the same result; and every token the library
// issues for a plain agent ID takes the fast path.
func FuzzParsePayloadFastPath(f *testing.F) {
	for _, tok := range seedTokens(f) {
		body, _, _ := strings.Cut(tok, ".")
		if raw, ok := decodeB64(body); ok {
			f.Add(raw)
		}
	}
	f.Add([]byte(`{"sid":"a","aid":"b","exp":0}`))
	f.Add([]byte(`{"sid":"a","aid":"b","exp":01}`))
	f.Add([]byte(`{"sid":"a\u0041","aid":"b","exp":1}`))
	f.Add([]byte(`{"sid":"a","aid":"b","exp":1,"x":"\ud800"}`))
	f.Add([]byte(`{"sid":"a\ud800","aid":"b","exp":1}`))
	f.Add([]byte(`{"sid":"é","aid":"","exp":18446744073709551615}`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		fast, ok := parseCanonicalPayload(raw)
		if !ok {
			return
		}
		slow, ok := parsePayloadJSON(raw)
		if !ok || slow != fast {
			t.Fatalf("%q: fast path %+v, general parser %+v (%v)", raw, fast, slow, ok)
		}
		if !bytes.Equal(fast.appendJSON(nil), raw) {
			t.Fatalf("%q: fast path accepted a payload the encoder would write as %q", raw, fast.appendJSON(nil))
		}
	})
}

// Authenticate on the in-memory store never panics, fails only with
// documented classes, and succeeds only for a token it issued to that agent.
func FuzzAuthenticate(f *testing.F) {
	m, err := New(NewMemoryStore(), Config{
		Secret: []byte(fuzzSecret), TTL: time.Minute, Limit: 2,
		Clock: func() time.Time { return time.Unix(30, 0) },
	})
	if err != nil {
		f.Fatal(err)
	}
	issued := map[string]string{} // token -> agent
	for _, a := range []string{"did:agentmesh:test", "b"} {
		iss, err := m.Issue(context.Background(), a)
		if err != nil {
			f.Fatal(err)
		}
		issued[iss.Token] = a
		f.Add(iss.Token, a)
	}
	for _, tok := range seedTokens(f) {
		f.Add(tok, "did:agentmesh:test")
	}
	f.Fuzz(func(t *testing.T, token, agentID string) {
		s, err := m.Authenticate(context.Background(), token, agentID)
		if err == nil {
			if issued[token] != agentID || s.AgentID != agentID {
				t.Fatalf("accepted %q for %q", token, agentID)
			}
			return
		}
		for _, class := range []error{ErrInvalidAgentID, ErrInvalidTokenFormat, ErrInvalidSignature, ErrAccessDenied, ErrSessionExpired} {
			if errors.Is(err, class) {
				return
			}
		}
		t.Fatalf("undocumented error %v", err)
	})
}

func mustDecode(t *testing.T, s string) []byte {
	b, ok := decodeB64(s)
	if !ok {
		t.Fatalf("accepted undecodable payload %q", s)
	}
	return b
}
