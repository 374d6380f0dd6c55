"""Typed files one stage hands another."""
