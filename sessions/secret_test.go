package sessions_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/agentsessions/agentsessions/sessions"
)

func writeSecretFile(t *testing.T, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "secret.key")
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// The documented rule: trailing CR/LF bytes go, nothing else does.
func TestLoadSecretFileTrimsTrailingNewlinesOnly(t *testing.T) {
	for _, c := range []struct{ content, want string }{
		{"k", "k"},
		{"k\n", "k"},
		{"k\r\n", "k"},
		{"k\n\n\r\n\r", "k"},
		{"\nk\n", "\nk"},
		{" k \t\n", " k \t"},
		{"a\nb\n", "a\nb"},
		{"k\n ", "k\n "},
	} {
		got, err := sessions.LoadSecretFile(writeSecretFile(t, c.content))
		if err != nil || string(got) != c.want {
			t.Errorf("%q: got %q, %v; want %q", c.content, got, err, c.want)
		}
	}
}

// A file written by `echo "$SECRET" > file` and read with LoadSecretFile
// signs tokens that a manager given the bare secret accepts, and the
// other way round: one secret, not two.
func TestLoadSecretFileMatchesTheBareSecret(t *testing.T) {
	const bare = "0123456789abcdef0123456789abcdef-bare"
	loaded, err := sessions.LoadSecretFile(writeSecretFile(t, bare+"\n"))
	if err != nil {
		t.Fatal(err)
	}
	store := sessions.NewMemoryStore()
	ctx := context.Background()
	a, _ := sessions.New(store, sessions.Config{Secret: loaded, TTL: time.Hour, Limit: 5})
	b, _ := sessions.New(store, sessions.Config{Secret: []byte(bare), TTL: time.Hour, Limit: 5})
	for _, pair := range [][2]*sessions.Manager{{a, b}, {b, a}} {
		iss, err := pair[0].Issue(ctx, "agent")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := pair[1].Authenticate(ctx, iss.Token, "agent"); err != nil {
			t.Fatalf("token from one manager rejected by the other: %v", err)
		}
	}
}

func TestLoadSecretFileErrors(t *testing.T) {
	for _, content := range []string{"", "\n", "\r\n\n"} {
		_, err := sessions.LoadSecretFile(writeSecretFile(t, content))
		if !errors.Is(err, sessions.ErrInvalidConfig) || !strings.Contains(err.Error(), "empty") {
			t.Errorf("%q: %v; want ErrInvalidConfig saying empty", content, err)
		}
	}

	missing := filepath.Join(t.TempDir(), "nope.key")
	if _, err := sessions.LoadSecretFile(missing); !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), missing) {
		t.Errorf("missing file: %v; want fs.ErrNotExist naming the path", err)
	}

	if _, err := sessions.LoadSecretFile(t.TempDir()); err == nil {
		t.Error("a directory was accepted as a secret file")
	}

	// Too big: refused, and the error holds none of the content.
	const marker = "SECRET-MARKER-"
	big := strings.Repeat(marker, sessions.MaxSecretFileSize/len(marker)+1)
	_, err := sessions.LoadSecretFile(writeSecretFile(t, big))
	if !errors.Is(err, sessions.ErrInvalidConfig) || strings.Contains(err.Error(), "MARKER") {
		t.Errorf("oversized file: %v; want ErrInvalidConfig without the content", err)
	}
	exact := strings.Repeat("k", sessions.MaxSecretFileSize)
	if got, err := sessions.LoadSecretFile(writeSecretFile(t, exact)); err != nil || len(got) != len(exact) {
		t.Errorf("file of exactly MaxSecretFileSize bytes: %d bytes, %v", len(got), err)
	}
}

// New warns, through Config.Logger, about each secret under 32 bytes,
// naming the field and its length, never its bytes; a long secret gives no
// warning. Short secrets still work.
func TestNewWarnsAboutShortSecrets(t *testing.T) {
	var logs bytes.Buffer
	logger := slog.New(slog.NewTextHandler(&logs, nil))
	const short = "tooShortSecret"
	long := strings.Repeat("L", sessions.RecommendedSecretSize)
	m, err := sessions.New(sessions.NewMemoryStore(), sessions.Config{
		Secret: []byte(short), PreviousSecrets: [][]byte{[]byte(long), []byte("shortPrev")},
		VerifySecrets: [][]byte{[]byte("shortVerify")},
		TTL:           time.Hour, Limit: 1, Logger: logger,
	})
	if err != nil {
		t.Fatal(err)
	}
	out := logs.String()
	for _, want := range []string{"level=WARN", "field=Secret bytes=14", "field=PreviousSecrets[1] bytes=9", "field=VerifySecrets[0] bytes=11"} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, short) || strings.Contains(out, "shortPrev") || strings.Contains(out, "shortVerify") || strings.Contains(out, "PreviousSecrets[0]") {
		t.Errorf("log holds a secret or warns about the long one:\n%s", out)
	}
	if _, err := m.Issue(context.Background(), "agent"); err != nil {
		t.Fatalf("short secret no longer works: %v", err)
	}

	logs.Reset()
	if _, err := sessions.New(sessions.NewMemoryStore(), sessions.Config{
		Secret: []byte(long), TTL: time.Hour, Limit: 1, Logger: logger,
	}); err != nil || logs.Len() != 0 {
		t.Fatalf("32-byte secret: %v, logged %q", err, logs.String())
	}
}

// Load the signing secret from a file written with
// `head -c 32 /dev/urandom | base64 > secret.key`: the trailing newline is
// not part of the secret.
func ExampleLoadSecretFile() {
	dir, err := os.MkdirTemp("", "example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "secret.key")
	if err := os.WriteFile(path, []byte("q2V3kYpJ0b6mW1xLr8s9TnCfHdGaZeUo4iQvB7jKlM0=\n"), 0o600); err != nil {
		log.Fatal(err)
	}

	secret, err := sessions.LoadSecretFile(path)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(len(secret), "bytes")
	_, err = sessions.New(sessions.NewMemoryStore(), sessions.Config{Secret: secret, TTL: time.Hour, Limit: 5})
	fmt.Println("manager:", err == nil)

	if err := os.WriteFile(path, []byte("\n"), 0o600); err != nil {
		log.Fatal(err)
	}
	_, err = sessions.LoadSecretFile(path)
	fmt.Println("empty file:", errors.Is(err, sessions.ErrInvalidConfig))
	// Output:
	// 44 bytes
	// manager: true
	// empty file: true
}
