"""Care coordination (issue 16): closed-loop referrals and their loop metrics."""
