//! The napi-rs binding of membacking (thin: conversion of arguments, results and errors only).
