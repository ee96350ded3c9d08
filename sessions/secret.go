package sessions

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
)

// RecommendedSecretSize is the shortest secret, in bytes, that [New]
// accepts without a warning. Shorter secrets still work (the reference
// implementation and its test vectors use them), but [New] logs a warning
// through [Config.Logger] for each one. The agentsessions CLI refuses
// shorter secrets outright.
const RecommendedSecretSize = 32

// MaxSecretFileSize is the largest file [LoadSecretFile] reads, in bytes.
// A bigger file is almost certainly the wrong one (a log, a binary, a
// device such as /dev/urandom that would never end).
const MaxSecretFileSize = 64 << 10

// LoadSecretFile reads a secret ([Config.Secret] or a verify-only secret)
// from the file at path. It is the one way the agentsessions CLI and
// service load secret files; a service that shares a secret file with them
// must load it the same way, or its tokens will not verify there (and
// theirs not in it).
//
// The rules are exact:
//
//   - The secret is the file's bytes with every trailing carriage return
//     and line feed removed (as `echo` and editors add them): "k\n",
//     "k\r\n" and "k\n\n" all give "k". Nothing else is removed: leading
//     newlines, spaces and tabs anywhere, and newlines before the last
//     other byte are part of the secret. The bytes are not decoded: a
//     base64 text file's secret is that text.
//   - A file that is empty, or holds only CR/LF bytes, is an error
//     matching [ErrInvalidConfig].
//   - A file larger than [MaxSecretFileSize] is an error matching
//     [ErrInvalidConfig].
//   - A file that cannot be read gives the os error, wrapped, so
//     errors.Is(err, fs.ErrNotExist) and fs.ErrPermission work.
//
// No error ever contains any of the file's content; errors name the path.
// The secret's length is not checked here: see [RecommendedSecretSize].
// File permissions are not checked either; keep the file readable by the
// service's user only (chmod 600).
func LoadSecretFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("sessions: secret file: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, MaxSecretFileSize+1))
	if err != nil {
		var pe *os.PathError
		if !errors.As(err, &pe) {
			err = &os.PathError{Op: "read", Path: path, Err: err}
		}
		return nil, fmt.Errorf("sessions: secret file: %w", err)
	}
	if len(b) > MaxSecretFileSize {
		clear(b)
		return nil, &ConfigError{Field: "secret file " + path,
			Reason: fmt.Sprintf("is larger than %d bytes; is it the right file?", MaxSecretFileSize)}
	}
	secret := bytes.TrimRight(b, "\r\n")
	if len(secret) == 0 {
		return nil, &ConfigError{Field: "secret file " + path, Reason: "is empty (or holds only newlines)"}
	}
	return secret, nil
}
