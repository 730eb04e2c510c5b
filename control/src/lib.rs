//! Control services: function master, scheduler, proxy, agent, frontend, meta service (grows with later issues).
