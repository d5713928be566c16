package gitlabtest

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/flotilla-ci/flotilla/host/jobs/gitlab"
)

// Token resets (`runner reset-token`) and a record of legacy registrations, kept apart
// from the rest of the server.

// handleResetToken adds the two reset endpoints: by the current token, and by runner
// ID with a personal access token (AddPersonalAccessToken).
func (s *Server) handleResetToken(mux *http.ServeMux) {
	mux.HandleFunc("POST /api/v4/runners/reset_authentication_token", s.resetByToken)
	mux.HandleFunc("POST /api/v4/runners/{id}/reset_authentication_token", s.resetByID)
}

// AddPersonalAccessToken makes pat valid for the endpoints that need one.
func (s *Server) AddPersonalAccessToken(pat string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.pats == nil {
		s.pats = map[string]bool{}
	}
	s.pats[pat] = true
}

// Registrations returns the legacy registration requests received, in order.
func (s *Server) Registrations() []gitlab.RegisterRequest {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]gitlab.RegisterRequest(nil), s.registrations...)
}

func (s *Server) resetByToken(w http.ResponseWriter, r *http.Request) {
	var in struct{ Token string }
	if !decode(w, r, &in) {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	id, ok := s.tokens[in.Token]
	if !ok {
		writeJSON(w, http.StatusForbidden, map[string]string{"message": "403 Forbidden"})
		return
	}
	s.replaceTokenLocked(w, in.Token, id)
}

func (s *Server) resetByID(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.pats[r.Header.Get("PRIVATE-TOKEN")] {
		writeJSON(w, http.StatusUnauthorized, map[string]string{"message": "401 Unauthorized"})
		return
	}
	id, _ := strconv.ParseInt(r.PathValue("id"), 10, 64)
	for tok, tid := range s.tokens {
		if tid == id {
			s.replaceTokenLocked(w, tok, id)
			return
		}
	}
	writeJSON(w, http.StatusNotFound, map[string]string{"message": "404 Runner Not Found"})
}

// replaceTokenLocked gives runner id a new token in place of old and answers 201 as
// GitLab does.
func (s *Server) replaceTokenLocked(w http.ResponseWriter, old string, id int64) {
	prefix := ""
	if strings.HasPrefix(old, "glrt-") {
		prefix = "glrt-"
	}
	tok := fmt.Sprintf("%sreset-%d-%d", prefix, id, time.Now().UnixNano())
	delete(s.tokens, old)
	s.tokens[tok] = id
	writeJSON(w, http.StatusCreated, map[string]any{"token": tok, "token_expires_at": nil})
}
