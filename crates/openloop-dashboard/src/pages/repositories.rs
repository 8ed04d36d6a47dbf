//! `/ui/repositories`: connected repositories (push-to-deploy).
